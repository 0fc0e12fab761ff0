"""stablevideo"""
