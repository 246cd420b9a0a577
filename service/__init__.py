"""rllc.service"""
