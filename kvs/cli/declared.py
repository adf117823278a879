"""Commands on declared stores (kvs.provider): endpoints, watch."""

from __future__ import annotations

from typing import Any

from kvs import exception
from kvs.cli.output import show_value, table, to_json
from kvs.cli.session import EXIT_FAILED, EXIT_OK, Failure, Session, stop_on_signals


def _provider_of(session: Session, name: str) -> Any:
    found = session.provider(name)
    if found is None:
        raise Failure(f"store {name!r} declares no endpoints", EXIT_FAILED)
    return found


def cmd_endpoints(session: Session) -> int:
    from kvs.provider.scheduler import SAMPLER_LEASE_KEY

    name = session.arg("store")
    store = session.store(name)
    found = session.provider(name)
    if found is None:
        session.emit({"store": name, "locked": False, "sampler": False, "endpoints": []},
                     f"store {name!r} declares no endpoints")
        return EXIT_OK
    try:
        sampler = store.lease_info(SAMPLER_LEASE_KEY) is not None
    except exception.KVSError:
        sampler = False
    rows = [_endpoint_row(found.endpoint(endpoint), sampler)
            for endpoint in found.list_endpoints()]
    store_lock = found.lock_info()
    data = {"store": name, "locked": store_lock.get("locked", False),
            "sampler": sampler, "endpoints": rows}
    text = table(["endpoint", "value_raw", "value_cal", "calibration", "locked", "logging"],
                 [[row["endpoint"], row["value_raw"], row.get("value_cal"),
                   row["calibration"], _locked_text(row["lockout"]), row["logging_text"]]
                  for row in rows])
    if store_lock.get("locked"):
        text += f"\nstore {name!r} is locked out ({_locked_text(store_lock)})"
    for row in rows:
        del row["logging_text"]
    session.emit(data, text)
    return EXIT_OK


def _locked_text(info: dict[str, Any]) -> str:
    if not info.get("locked"):
        return "no"
    return f"yes, by {info.get('holder', '?')} since {info.get('since', '?')}"


def _endpoint_row(endpoint: Any, sampler: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"endpoint": endpoint.name, "value_raw": None}
    try:
        row.update(endpoint.get())
    except exception.NotFound:
        row["missing"] = True
    except exception.CalibrationError as error:
        row["value_raw"] = error.value_raw
        row["calibration_error"] = error.message
    row["calibration"] = endpoint.calibration
    row["lockout"] = endpoint.lock_info()
    interval = endpoint.schedule_interval
    row["schedule_interval"] = interval
    row["logging"] = bool(interval > 0 and sampler)
    if interval <= 0:
        row["logging_text"] = "off"
    else:
        row["logging_text"] = (f"every {interval:g} s, "
                               f"{'sampler running' if sampler else 'no sampler running'}")
    return row


def _event_text(event: dict[str, Any]) -> str:
    parts = [str(event.get("timestamp")), f"{event.get('store')}.{event.get('endpoint')}",
             f"value_raw={show_value(event.get('value_raw'))}"]
    if "value_cal" in event:
        parts.append(f"value_cal={show_value(event['value_cal'])}")
    parts.append(f"reason={event.get('reason')}")
    return "  ".join(parts)


def cmd_watch(session: Session) -> int:
    name = session.arg("store")
    found = _provider_of(session, name)
    names = session.arg("endpoints") or None
    count, seen = session.arg("count"), 0
    with stop_on_signals() as stop:
        watcher = found.watch(names, stop_event=stop, timeout=session.arg("timeout"))
        if session.arg("sample"):
            found.start_logging()
        session.note(f"watching store {name!r} "
                     f"({', '.join(names) if names else 'all endpoints'}); Ctrl-C stops")
        for event in watcher:
            session.write(to_json(event, indent=None) if session.json else _event_text(event))
            seen += 1
            if count is not None and seen >= count:
                break
    return EXIT_OK
