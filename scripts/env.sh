# Source me: environment for running glue_ros from the pip venv (no ROS install needed).
#   . scripts/env.sh
_glue_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="${VENV:-$_glue_root/.venv}"
export PATH="$VIRTUAL_ENV/bin:$PATH"
# ament_index_python (get_package_share_directory) finds installed packages through this.
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# Frames of 640x480 colour exceed Fast DDS' default shared-memory segment: use our profile.
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_glue_root/config/fastdds_local.xml}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
unset _glue_root
