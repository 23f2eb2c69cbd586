from glob import glob

from setuptools import find_packages, setup

package_name = "glue_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    package_data={package_name: ["profiles/*.yaml"]},  # the shipped backend profiles (glue_ros.config.PROFILES)
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy",
        "opencv-python-headless",
        "pyyaml",
        "torch",
        "safetensors",
        "huggingface_hub",
        "rosbags",
        "tqdm",
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "hypothesis", "transformers"]},
    zip_safe=True,
    maintainer="glue_ros maintainers",
    maintainer_email="dev@glue-ros.example",
    description="Learned feature-matching front-end (SuperPoint + LightGlue/SuperGlue) for ROS 2 VO/SLAM",
    license="Apache-2.0",
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
