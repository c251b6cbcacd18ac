"""Drivers: one module per protocol behind the small ``Driver`` interface, chosen by ``driver:``.

Only driver modules import pymodbus, bleak or aiomqtt; their types never leave the driver.
"""
