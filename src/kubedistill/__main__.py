"""`python -m kubedistill ...` is the `kubedistill` command (torchrun uses this form)."""

from kubedistill.cli import main

main()
