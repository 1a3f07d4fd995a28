"""The dashboard's web app: FastAPI routes rendering Jinja2 pages on the server (no JavaScript build, no
network: it works on an offline GPU box), over the run folders and the store as they are on disk.
Reading takes no lock; starting a recipe or removing an artifact needs the dashboard's token."""
from __future__ import annotations

import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from pipeline.dashboard import graph, launch, runs, store_view
from pipeline.engine import report

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
RUN_IMAGES = (report.CURVES, report.PLOT)
SORTS = {"started": lambda r: r.chain.get("started", ""), "recipe": lambda r: r.chain.get("recipe", ""),
         "time": lambda r: r.seconds, "status": lambda r: r.status, "model": lambda r: r.chain.get("model", "")}


@dataclass
class Settings:
    roots: list[Path]   # folders holding run folders (outputs/, multirun/)
    store: Path
    token: str


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="tunechain dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    def page(request: Request, name: str, **context) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, {"store": settings.store, **context})

    def check_token(token: str) -> None:
        if not secrets.compare_digest(token.encode(), settings.token.encode()):
            raise HTTPException(status_code=403, detail="wrong token: see the dashboard's start-up line")

    def run_or_404(run_id: str) -> runs.Run:
        run = runs.by_id(settings.roots, run_id)
        if run is None:
            raise HTTPException(status_code=404, detail=f"no run {run_id}")
        return run

    @app.get("/", response_class=HTMLResponse)
    def run_list(request: Request, recipe: str = "", status: str = "", model: str = "", sort: str = "started"):
        everything = runs.find_runs(settings.roots)
        shown = [r for r in everything if (not recipe or r.chain.get("recipe") == recipe)
                 and (not status or r.status == status) and (not model or r.chain.get("model") == model)]
        if sort in SORTS and sort != "started":
            shown.sort(key=SORTS[sort])
        columns = list(dict.fromkeys(k for r in shown for k in r.headline))
        starting = _starting(settings.roots[0])
        return page(request, "runs.html", runs=shown, columns=columns, recipe=recipe, status=status, model=model,
                    sort=sort, sorts=list(SORTS), starting=starting,
                    recipes=sorted({r.chain.get("recipe", "") for r in everything}),
                    models=sorted({r.chain.get("model", "") for r in everything}),
                    statuses=sorted({r.status for r in everything}))

    @app.get("/run/{run_id:path}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str, items: str = ""):
        folder = _starting(settings.roots[0]).get(run_id)
        if folder is not None:  # started from the page, not planned yet
            return page(request, "starting.html", run_id=run_id, console=_tail(folder / "console.log"))
        run = run_or_404(run_id)
        evals = [s["name"] for s in run.stages if s["kind"] == "eval" and s.get("artifact")]
        shown_items = items or (evals[-1] if evals else "")
        return page(request, "run.html", run=run, svg=graph.svg(run.stages),
                    results=report.results_table(run.stages), variants=report.variants(run.stages),
                    images=[n for n in RUN_IMAGES if (run.folder / n).is_file()], evals=evals,
                    items_stage=shown_items, items=runs.items(run, shown_items) if shown_items else [],
                    comparisons=report.comparisons(run.stages),
                    log=runs.log_tail(run) if run.status == "running" else "")

    @app.get("/file/{run_id:path}")
    def run_file(run_id: str, name: str = Query(...)):
        if name not in RUN_IMAGES:
            raise HTTPException(status_code=404, detail=f"not a run image: {name}")
        return FileResponse(run_or_404(run_id).folder / name)

    @app.get("/compare", response_class=HTMLResponse)
    def compare(request: Request, run: list[str] = Query(default=[]), artifact: list[str] = Query(default=[])):
        every = runs.find_runs(settings.roots)
        if artifact:  # stored artifacts: their figures, and what their fingerprints covered
            found = store_view.scan(settings.store, every)
            missing = [a for a in artifact if a not in found]
            if missing:
                raise HTTPException(status_code=404, detail=f"no stored artifact {', '.join(missing)}")
            chosen_artifacts = [found[a] for a in artifact]
            return page(request, "compare_artifacts.html", artifacts=chosen_artifacts,
                        metrics=store_view.metric_rows(chosen_artifacts),
                        config=runs.differences([s.explained for s in chosen_artifacts]))
        chosen = [run_or_404(r) for r in run]
        return page(request, "compare.html", runs=chosen, metrics=runs.metric_rows(chosen),
                    config=runs.config_differences(chosen), every=every)

    @app.get("/store", response_class=HTMLResponse)
    def store(request: Request, fingerprint: str = ""):
        found = store_view.scan(settings.store, runs.find_runs(settings.roots))
        ordered = sorted(found.values(), key=lambda s: s.artifact.created, reverse=True)
        return page(request, "store.html", artifacts=ordered, found=found, chosen=found.get(fingerprint),
                    total=sum(s.bytes for s in ordered))

    @app.post("/store/remove", response_class=HTMLResponse)
    def remove(request: Request, fingerprint: str = Form(...), token: str = Form(""), confirm: str = Form("")):
        if confirm != "yes":  # the confirmation page first
            return page(request, "remove.html", fingerprint=fingerprint)
        check_token(token)
        try:
            folder = store_view.remove(settings.store, fingerprint, runs.find_runs(settings.roots))
        except KeyError:
            raise HTTPException(status_code=404, detail=f"no stored artifact {fingerprint}") from None
        except store_view.StillNeeded as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        return page(request, "removed.html", folder=folder)

    @app.get("/start", response_class=HTMLResponse)
    def start_form(request: Request):
        return page(request, "start.html", recipes=launch.recipes(), recipe="quickstart", overrides="", plan=None)

    @app.post("/start", response_class=HTMLResponse)
    def start(request: Request, recipe: str = Form(...), overrides: str = Form(""), token: str = Form(""),
              action: str = Form("plan")):
        check_token(token)
        try:
            if action == "run":
                folder = launch.start(recipe, overrides, settings.roots[0], settings.store)
                run_id = f"{settings.roots[0].name}/{folder.relative_to(settings.roots[0]).as_posix()}"
                return RedirectResponse(f"/run/{run_id}", status_code=303)
            with tempfile.TemporaryDirectory() as scratch:
                status, output = launch.plan(recipe, overrides, Path(scratch), settings.store)
        except launch.BadRequest as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        return page(request, "start.html", recipes=launch.recipes(), recipe=recipe, overrides=overrides,
                    plan=output, plan_ok=status == 0)

    return app


def _starting(root: Path) -> dict[str, Path]:
    """Run folders the page started whose chain.json is not written yet, by run id."""
    if not root.is_dir():
        return {}
    return {f"{root.name}/{f.parent.relative_to(root).as_posix()}": f.parent for f in root.glob("*/*/console.log")
            if not (f.parent / "chain.json").is_file()}


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""
