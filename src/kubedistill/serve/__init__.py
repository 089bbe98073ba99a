"""kubedistill.serve"""
