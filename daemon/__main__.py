from rbd.daemon.main import run

raise SystemExit(run())
