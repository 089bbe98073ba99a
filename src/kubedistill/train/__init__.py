"""kubedistill.train"""
