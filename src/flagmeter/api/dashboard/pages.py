"""The dashboard's HTML, filled into `flagmeter/dashboard/templates` with every value escaped (pure, no I/O
once the templates are read at import)."""

from __future__ import annotations

from datetime import datetime
from html import escape
from importlib import resources
from string import Template

from ...clock import rfc3339
from ...store import AlertRecord
from .figures import RESERVATIONS_NOTE, TenantRow, TenantView, expiry
from .format import delivery_summary, human_time, level, percent_label, period_label

UNKNOWN_TENANT = '<p class="error">No such tenant.</p><p><a href="/">← All tenants</a></p>'


def shipped(folder: str) -> dict[str, str]:
    """The files in `flagmeter/dashboard/<folder>` by name: found through the package, so installs work."""
    root = resources.files("flagmeter") / "dashboard" / folder
    return {entry.name: entry.read_text() for entry in root.iterdir() if entry.is_file()}


TEMPLATES = {name: Template(text) for name, text in shipped("templates").items()}


def render(template: str, **values: object) -> str:
    """Fill a template; callers pass markup they built from escaped values only."""
    return TEMPLATES[template].substitute(values)


def page_html(title: str, main: str, *, signed_in: bool) -> str:
    session = (
        '<form class="logout" method="post" action="/logout"><button type="submit">Sign out</button></form>'
        if signed_in
        else ""
    )
    return render("page.html", title=escape(title), main=main, session=session)


def login_html(error: str = "") -> str:
    notice = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return page_html("Sign in", render("login.html", error=notice), signed_in=False)


def time_html(moment: datetime, *, seconds: bool = False) -> str:
    exact = rfc3339(moment)
    return f'<time datetime="{exact}" title="{exact}">{human_time(moment, seconds=seconds)}</time>'


# -- the overview -----------------------------------------------------------------------------


def feature_rows(features: list[tuple[str, int]]) -> str:
    if not features:
        return '<tr class="none"><td colspan="2">No usage this period yet.</td></tr>'
    return "".join(f"<tr><td>{escape(f)}</td><td>{t:,}</td></tr>" for f, t in features)


def tenant_row(row: TenantRow | None) -> str:
    """One tenant's list item; with None, the blank copy dashboard.js clones for new tenants."""
    if row is None:
        values = dict.fromkeys(("id", "name", "used", "quota", "period_end", "last_hour", "href"), "")
        return render(
            "tenant_row.html", **values, level="level-ok", percent_label="", bar_width="0", features=""
        )
    percent = row.percent
    return render(
        "tenant_row.html",
        id=escape(row.tenant.id),
        name=escape(row.tenant.name),
        level=level(percent),
        percent_label=percent_label(percent),
        bar_width=f"{min(percent, 100.0):g}",
        used=f"{row.used:,}",
        quota=f"{row.tenant.monthly_quota:,}",
        period_end=row.period.end.strftime("%Y-%m-%d"),
        last_hour=f"{row.last_hour:,}",
        features=feature_rows(row.features()),
        href=f"/tenants/{escape(row.tenant.id)}",
    )


def overview_html(rows: list[TenantRow], now: datetime) -> str:
    main = render(
        "overview.html",
        rows="\n".join(tenant_row(r) for r in rows),
        row_template=tenant_row(None),
        empty_hidden=" hidden" if rows else "",
        as_of=rfc3339(now),
        as_of_label=now.strftime("%H:%M:%S UTC"),
    )
    return page_html("Tenants", main, signed_in=True)


# -- one tenant -----------------------------------------------------------------------------


def alert_rows(history: list[AlertRecord]) -> str:
    if not history:
        return '<tr class="none"><td colspan="4">No alerts yet.</td></tr>'
    return "".join(
        f"<tr><td>{time_html(record.created_at)}</td><td>{record.threshold} %</td>"
        f"<td>{record.used:,} / {record.quota:,}</td><td>{escape(delivery_summary(record))}</td></tr>"
        for record in history
    )


def hold_rows(view: TenantView) -> str:
    if not view.holds:
        return f'<tr class="none"><td colspan="3">{RESERVATIONS_NOTE[view.holds is None]}</td></tr>'
    return "".join(
        f"<tr><td>{escape(hold.id)}</td><td>{hold.tokens:,}</td>"
        f"<td>{time_html(expiry(hold), seconds=True)}</td></tr>"
        for hold in view.holds
    )


def tenant_html(view: TenantView) -> str:
    row, tenant = view.row, view.row.tenant
    main = render(
        "tenant.html",
        name=escape(tenant.name),
        id=escape(tenant.id),
        used=f"{row.used:,}",
        quota=f"{tenant.monthly_quota:,}",
        level=level(row.percent),
        percent_label=percent_label(row.percent),
        period_label=period_label(row.period),
        billing_day=tenant.billing_day,
        last_hour=f"{row.last_hour:,}",
        chart=view.chart.svg(),
        features=feature_rows(row.features()),
        thresholds=escape(view.thresholds),
        alerts=alert_rows(view.history),
        reserved=view.reserved_label,
        reservations=hold_rows(view),
        as_of=rfc3339(view.now),
        as_of_label=f"{view.now:%H:%M:%S} UTC",
    )
    return page_html(tenant.name, main, signed_in=True)


def unknown_tenant_html() -> str:
    return page_html("Unknown tenant", UNKNOWN_TENANT, signed_in=True)
