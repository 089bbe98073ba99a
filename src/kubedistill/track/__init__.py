"""kubedistill.track"""
