"""Test setup shared by tests/ and examples/: 8 fake CPU devices.

XLA reads XLA_FLAGS once, when JAX first starts a backend, so this must run
before any test module imports JAX.
"""

import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
