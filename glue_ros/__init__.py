"""glue_ros: a learned feature-matching front-end (SuperPoint + LightGlue/SuperGlue) for ROS 2 VO/SLAM.

The package itself is ROS-free; ``glue_ros.ros`` holds the rclpy adapters. Importing it has no side
effects (no torch flags, no model loading).
"""
__version__ = "0.1.0"
