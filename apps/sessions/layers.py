"""The channel layer of several processes (`REDIS_URL` set): channels_redis' layer, through a
Redis outage without a traceback in the log.

Every call the app makes on the layer waits an outage out, or gives up, with a warning line
(apps.sessions.consumers, groups, services). One call the layer makes by itself does not:
having handed a message to its receiver, channels_redis removes the copy it kept in Redis
(for a receiver that dies before it has the message) in a task nobody awaits. When Redis goes
away between the two, that task fails, and asyncio reports its exception ("Task exception was
never retrieved", with a traceback) once the task is collected. Here that failure is a
warning line too. The message was delivered all the same; channels_redis may deliver it again
if the copy survived (as it does when such a task is cancelled), and a restarted Redis has
lost the copy anyway.
"""

from __future__ import annotations

import logging

from channels_redis import core
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class RedisChannelLayer(core.RedisChannelLayer):
    async def _clean_receive_backup(self, index, channel):
        try:
            await super()._clean_receive_backup(index, channel)
        except RedisError as exc:
            log.warning("channel layer: the copy of a message on %s was kept: %r", channel, exc)
