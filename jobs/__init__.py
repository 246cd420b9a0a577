"""rllc.jobs"""
