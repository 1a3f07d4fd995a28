"""Where a chain's figures go besides <run folder>/metrics.jsonl: one module per tracker, each a Sink
(base.py) that receives the same per-step rows, per-stage summaries, redacted config and report.
`logger.backends` names them (several at once: `logger.backends=[wandb,tensorboard]`); the fan-out and
metrics.jsonl are pipeline/engine/tracking.py's."""

# name -> (module, class); imported only when chosen (each library is optional)
BACKENDS = {"wandb": ("pipeline.trackers.wandb_sink", "WandbSink"),
            "tensorboard": ("pipeline.trackers.tensorboard_sink", "TensorBoardSink"),
            "mlflow": ("pipeline.trackers.mlflow_sink", "MlflowSink"),
            "trackio": ("pipeline.trackers.trackio_sink", "TrackioSink")}
