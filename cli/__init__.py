"""rllc.cli"""
