"""ros2 launch glue_ros matcher.launch.py [profile:=superpoint_lightglue] [params_file:=...]
    [namespace:=...] [cameras:=cam0,cam1] [image:=...] [camera_info:=...] [compressed:=true]
    [device:=cuda] [precision:=fp16] [max_keypoints:=512] [match_against:=2]
    [params:='extractor.max_keypoints=512 keyframes.buffer_size=8'] [use_sim_time:=true] [log_level:=debug]

Parameters: the profile's shipped file first, then params_file, then the per-argument overrides and
params:= (space-separated NAME=VALUE). The arguments become node invocations in
glue_ros.ros.launch_args (shared with `glue-ros-launch`, the equivalent command for a pip venv
without launch_ros); unknown names are errors naming the closest match.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from glue_ros.ros.launch_args import EXECUTABLE, LAUNCH_ARGUMENTS, PACKAGE, invocations


def _matchers(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=inv.name,
            namespace=inv.namespace,
            parameters=[*inv.params_files, inv.parameters],  # in order: later entries override earlier ones
            remappings=inv.remappings,
            arguments=["--ros-args", "--log-level", inv.log_level],
            output="screen",
            emulate_tty=True,
        )
        for inv in invocations(values)
    ]


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, (default, description) in LAUNCH_ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=_matchers)])
