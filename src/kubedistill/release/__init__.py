"""kubedistill.release: register a student in the MLflow registry and promote it past the gate (above serving and evaluation)."""
