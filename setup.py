"""ament_python package glue_ros (colcon build, or `pip install .` into the project's venv).

Runtime dependencies are not install_requires: in a ROS workspace they come from package.xml
(rosdep: apt packages such as python3-opencv and python3-numpy, whose pip names would clash with
them) plus the few pip-only ones listed in the README; in the pip venv scripts/setup_venv.sh installs
the pinned requirements*.txt first and then this package with --no-deps.
"""
from glob import glob

from setuptools import find_packages, setup

package_name = "glue_ros"


def files(pattern: str) -> list[str]:
    return sorted(glob(pattern))


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench", "bench.*"]),
    package_data={package_name: ["profiles/*.yaml"]},  # the shipped backend profiles (glue_ros.config.PROFILES)
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", files("launch/*.launch.py")),
        ("share/" + package_name + "/config", files("config/*.yaml") + files("config/*.xml")),
    ],
    install_requires=["setuptools"],
    python_requires=">=3.10",
    zip_safe=True,
    maintainer="glue_ros maintainers",
    maintainer_email="dev@glue-ros.example",
    description="Learned feature-matching front-end (SuperPoint + LightGlue/SuperGlue) for ROS 2 VO/SLAM",
    license="Apache-2.0",
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "matcher_node = glue_ros.ros.node:main",
            "glue-ros-match = glue_ros.tools.match:main",
            "glue-ros-eval-pairs = glue_ros.tools.eval_pairs:main",
            "glue-ros-eval-sequence = glue_ros.tools.eval_sequence:main",
            "glue-ros-demo = glue_ros.tools.demo:main",
            "glue-ros-replay = glue_ros.tools.replay:main",
            "glue-ros-make-bag = glue_ros.tools.make_bag:main",
            "glue-ros-launch = glue_ros.tools.launch:main",
        ],
    },
)
