from daemon.main import run

raise SystemExit(run())
