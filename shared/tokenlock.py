"""Lua scripts for a Redis key held by a token with an expiry (a job's lease, a service's leader lock).

KEYS[1] the key, ARGV[1] the holder's token, ARGV[2] the expiry in ms. Each returns 1 when it did
what it says, else 0.
"""

from __future__ import annotations

# Extend the key if this holder has it, or take it if nobody has it (a lapsed one is taken back).
TAKE_OR_EXTEND = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Extend the key only while this holder still has it (never take a lapsed one back: fencing).
EXTEND_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# Delete the key if this holder has it.
RELEASE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
