"""The one table from domain errors to statuses; how a worker's refusal reaches the caller."""

import msgspec
import pytest

from manman import errors
from manman.host.relay import worker_error
from manman.http.errors import status_of


def _reply(code: str, message: str = "no") -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})


@pytest.mark.parametrize(("worker", "caller"), [
    (400, 400), (404, 404), (405, 405), (409, 409), (410, 410), (413, 413), (415, 415),
    (422, 422), (429, 429), (503, 503), (507, 507),
    (401, 502), (403, 502), (500, 502), (502, 502), (200, 502)])
def test_a_workers_refusal_keeps_its_status_unless_it_is_the_workers_own_trouble(worker, caller):
    e = worker_error(worker, _reply("some_code", "the reason"))
    assert status_of(e) == caller
    if caller == worker and worker != 502:
        assert (e.code, e.message) == ("some_code", "the reason")
    else:
        assert e.code == "worker_error" and str(worker) in e.message


def test_a_reply_that_is_not_the_error_json_is_a_worker_error():
    e = worker_error(404, b"<html>nginx</html>")
    assert (status_of(e), e.code) == (502, "worker_error")


def test_every_error_in_the_tree_has_a_status_that_is_not_500():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)
    for cls in subclasses(errors.ManmanError):
        if issubclass(cls, (errors.StartupError, errors.Relayed)):
            continue  # a start-up failure never reaches HTTP; Relayed carries its own
        e = cls.__new__(cls)  # some take more than a message; the status depends on the class
        assert status_of(e) != 500, cls
