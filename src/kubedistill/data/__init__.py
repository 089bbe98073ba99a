"""kubedistill.data"""
