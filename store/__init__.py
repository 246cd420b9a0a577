"""rllc.store"""
