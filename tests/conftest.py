"""The test process runs ftprefix's commands in-process, after other tests have imported torch: it
takes the OpenMP wait policy the `ftprefix` command sets for itself (cli.main) from the start."""

from ftprefix.serving.cpus import wait_passively

wait_passively()
