"""rllc.data"""
