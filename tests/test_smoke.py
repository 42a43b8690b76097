import pytest

from model_runner.wire import DynamicSubclassServiceStub
from tests.hosts import call, ok, set_up

pytestmark = pytest.mark.anyio


async def test_good_tracker_setup_tick_predict(good_host):
    async with good_host.channel() as channel:
        stub = DynamicSubclassServiceStub(channel)
        assert (await set_up(stub, damping=1.0))[0] == "SUCCESS"
        assert await ok(stub, "tick", {"BTC": 100.0}) is None
        assert await ok(stub, "tick", {"BTC": 101.0}) is None
        assert await ok(stub, "predict", "BTC", 3, step=1) == [102.0, 103.0, 104.0]
        code, message, _ = await call(stub, "nope")
        assert code == "BAD_IMPLEMENTATION" and "nope" in message
