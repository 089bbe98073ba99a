"""Training across several nodes through Kubeflow Trainer: a TrainJob (trainer.kubeflow.org/v1alpha1) that runs
`torchrun -m kubedistill train ...` on every node of the `torch-distributed` runtime, and a launcher that creates it,
follows it and cleans it up (docs/pipeline.md, "Multi-node training")."""
