# glue_ros: the two commands of the README are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export FASTDDS_DEFAULT_PROFILES_FILE := $(abspath config/fastdds_local.xml)
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp

.PHONY: venv venv-runtime test demo bench clean

venv:
	VENV=$(VENV) scripts/setup_venv.sh test

venv-runtime:
	VENV=$(VENV) scripts/setup_venv.sh runtime

test: venv
	$(PY) -m pytest -q test

demo: venv-runtime
	$(PY) -m glue_ros.tools.demo --output out/demo $(ARGS)

bench: venv
	$(PY) bench/bench_backends.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_node.py --profile xfeat_lighterglue --keypoints 512 --modes rate,paced --rate 15 --frames 150
	$(PY) bench/bench_node.py --profile xfeat_lighterglue --keypoints 512 --modes rate --rate 10 --frames 150
	$(PY) bench/bench_node.py --profile xfeat_lighterglue --keypoints 512 --modes 30hz --frames 300
	$(PY) bench/bench_memory.py --keypoints 512,1024
	$(PY) bench/bench_pose.py
	$(PY) bench/bench_models.py
	$(PY) bench/bench_stream.py

clean:
	rm -rf build out .pytest_cache
