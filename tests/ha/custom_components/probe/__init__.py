"""The tests' window into Home Assistant (a seam we own): its state machine as JSON and service
calls, over HTTP on 127.0.0.1 without a login (the test instance has no users)."""

from typing import Any

from aiohttp import web
from homeassistant.components.http import HomeAssistantView
from homeassistant.core import HomeAssistant
from homeassistant.helpers.typing import ConfigType


class States(HomeAssistantView):
    url = "/probe/states"
    name = "probe:states"
    requires_auth = False

    async def get(self, request: web.Request) -> web.Response:
        hass: HomeAssistant = request.app["hass"]
        return self.json([state.as_dict() for state in hass.states.async_all()])


class Service(HomeAssistantView):
    url = "/probe/service/{domain}/{service}"
    name = "probe:service"
    requires_auth = False

    async def post(self, request: web.Request, domain: str, service: str) -> web.Response:
        hass: HomeAssistant = request.app["hass"]
        data: dict[str, Any] = await request.json()
        await hass.services.async_call(domain, service, data, blocking=True)
        return self.json({"called": f"{domain}.{service}"})


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    hass.http.register_view(States())
    hass.http.register_view(Service())
    return True
