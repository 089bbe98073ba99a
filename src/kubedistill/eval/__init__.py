"""kubedistill.eval"""
