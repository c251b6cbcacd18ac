"""A do-nothing frontend for the tests' Home Assistant: the real one needs packages the test
venv does not install, and without a frontend Home Assistant starts in recovery mode (no MQTT,
no birth message)."""

from homeassistant.core import HomeAssistant
from homeassistant.helpers.typing import ConfigType


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    return True
