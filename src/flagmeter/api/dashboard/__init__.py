"""The operators' dashboard: `/` (tenants by quota used, live) and `/tenants/{id}` (chart, alerts).

Admin only (`session`). The handlers (`views`) read the store and hand plain figures (`figures`) to the
pure renderers: `pages` fills `flagmeter/dashboard/templates` with every value escaped, `chart` draws
the SVG, `format` writes numbers and times. `responses` puts the security headers on everything and
serves `flagmeter/dashboard/static`, whose dashboard.js polls the JSON views to keep the numbers live.
"""

from .responses import static
from .session import LOGIN_WINDOW_S, login, logout
from .views import overview, tenant_json, tenant_page, usage_json

__all__ = [
    "LOGIN_WINDOW_S",
    "login",
    "logout",
    "overview",
    "static",
    "tenant_json",
    "tenant_page",
    "usage_json",
]
