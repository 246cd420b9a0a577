"""rllc.models"""
