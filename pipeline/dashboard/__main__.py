"""python -m pipeline.dashboard [--port 7860] [--host 127.0.0.1] [--store DIR] [--runs DIR ...]

Binds 127.0.0.1 unless told otherwise. Starting a recipe or removing an artifact needs a token: yours in
$TUNECHAIN_DASHBOARD_TOKEN, else a random one written to <store>/.dashboard_token (mode 0600) and named on
the start-up line (never the token itself)."""
from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

TOKEN_ENV = "TUNECHAIN_DASHBOARD_TOKEN"
ROOT = Path(__file__).resolve().parents[2]


def token_for(store: Path) -> tuple[str, str]:
    """(token, where it came from)."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV], f"${TOKEN_ENV}"
    store.mkdir(parents=True, exist_ok=True)
    path = store / ".dashboard_token"
    token = secrets.token_urlsafe(24)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(token + "\n")
    return token, f"{path} (mode 0600; or set ${TOKEN_ENV})"


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from pipeline.dashboard.app import Settings, create_app

    parser = argparse.ArgumentParser(prog="python -m pipeline.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0: reachable from other machines")
    parser.add_argument("--store", default=os.environ.get("TUNECHAIN_STORE") or str(ROOT / "store"))
    parser.add_argument("--runs", nargs="+", default=[str(ROOT / "outputs"), str(ROOT / "multirun")],
                        help="folders holding run folders (the first one receives runs started from the page)")
    args = parser.parse_args(argv)
    store = Path(args.store).resolve()
    token, where = token_for(store)
    app = create_app(Settings(roots=[Path(r).resolve() for r in args.runs], store=store, token=token))
    print(f"tunechain dashboard: http://{args.host}:{args.port}  store {store}; token for starting and removing: "
          f"{where}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
