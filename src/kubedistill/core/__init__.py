"""The ground floor: helpers every other package uses and that use none of them.

errors (UserError and kin), atomic (atomic file and JSON writes), log (the logger and progress output),
cache (the cache folder), interrupt (SIGTERM as Ctrl-C), names (metric names, environment variables),
version; device (torch device and distributed helpers) and checkpoint (safe checkpoint I/O) import torch
and are imported only by code that needs it.
"""
