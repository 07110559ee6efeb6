# The two commands a new user needs:
#   make demo   set up and run a simulated dock session end to end
#   make test   set up and run the test suite
.PHONY: demo test lint bench setup

demo:
	@scripts/setup.sh run
	@scripts/fetch-whisper-base.sh .venv/whisper-base >.venv/whisper-fetch.log 2>&1 || \
		{ cat .venv/whisper-fetch.log; exit 1; }
	.venv/bin/dockd demo --notes-model .venv/whisper-base $(DEMO_ARGS)

test:
	@scripts/setup.sh test
	.venv/bin/ruff check dockd tests bench
	.venv/bin/python -m pytest $(PYTEST_ARGS)

bench:
	@scripts/setup.sh test
	@command -v rclone >/dev/null || (apt-get update -qq && apt-get install -y -qq rclone)
	.venv/bin/python bench/offload.py
	.venv/bin/python bench/deliver.py --s3
	.venv/bin/python bench/deliver.py --sftp
