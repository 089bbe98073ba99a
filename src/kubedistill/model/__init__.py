"""kubedistill.model"""
