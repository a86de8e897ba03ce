-- The routing tier's retry budget (Gateway API GEP-3388, XBackendTrafficPolicy), per backend
-- Service. render.py writes the calls: ``init`` once per configuration (init_by_lua),
-- ``balance`` in every backend upstream (balancer_by_lua, once per try of a request) and
-- ``report`` on the status server (content_by_lua). docs/gateway.md, Retry budget.
--
-- The first try of a request counts a request for its backend and leaves the choice of the
-- endpoint to nginx's round robin (no peer is set). A later try is a retry: it is allowed
-- while the retries of the last budget interval are below ``percent`` % of its requests, or
-- while the retries of the last floor interval are below ``min_count``; an allowed retry is
-- counted and goes to nginx's round robin as well. A retry that is not allowed goes to the
-- routing tier's own "budget exhausted" server (a 503 with a header), and so does every later
-- try of the same request, uncounted.
--
-- Counts over an interval are estimated from two buckets of its width: the current one plus
-- the part of the previous one the interval still covers; the retry estimate is rounded up,
-- so a retry stays counted until its bucket has fully left the interval. Keys are built from
-- the backend key render.py passes ("namespace/name", both DNS labels) and numbers only.

local balancer = require "ngx.balancer"

local M = {}

local dict         -- the lua_shared_dict of the counters (every worker shares it)
local reject_peer  -- "unix:<socket>" of the budget-exhausted server

function M.init(dict_name, reject_socket)
    dict = ngx.shared[dict_name]
    reject_peer = "unix:" .. reject_socket
end

local function bucket_key(kind, key, width_ms, n)
    return kind .. "|" .. width_ms .. "|" .. key .. "|" .. n
end

-- The estimated count of ``kind`` ("q" requests, "r" retries) over the last ``width_ms``.
local function estimate(kind, key, width_ms, now_ms)
    local n = math.floor(now_ms / width_ms)
    local current = dict:get(bucket_key(kind, key, width_ms, n)) or 0
    local previous = dict:get(bucket_key(kind, key, width_ms, n - 1)) or 0
    return current + previous * (1 - (now_ms / width_ms - n))
end

local function count(kind, key, width_ms, now_ms)
    local n = math.floor(now_ms / width_ms)
    -- kept for two widths: the current bucket, then as the previous one
    dict:incr(bucket_key(kind, key, width_ms, n), 1, 0, 2 * width_ms / 1000 + 1)
end

local function total(what, key)
    dict:incr("total|" .. what .. "|" .. key, 1, 0)
end

local function reject()
    local ok, err = balancer.set_current_peer(reject_peer)
    if not ok then
        ngx.log(ngx.ERR, "retry budget: cannot reject the retry: ", err)
    end
end

function M.balance(key, percent, budget_ms, min_count, min_ms)
    local ctx = ngx.ctx
    local tries = (ctx.msv_tries or 0) + 1
    ctx.msv_tries = tries
    local now_ms = ngx.now() * 1000
    if tries == 1 then
        count("q", key, budget_ms, now_ms)
        total("requests", key)
        return
    end
    if ctx.msv_rejected then
        return reject()
    end
    local retries = math.ceil(estimate("r", key, budget_ms, now_ms))
    local requests = estimate("q", key, budget_ms, now_ms)
    local floor_retries = math.ceil(estimate("r", key, min_ms, now_ms))
    if retries * 100 < percent * requests or floor_retries < min_count then
        count("r", key, budget_ms, now_ms)
        if min_ms ~= budget_ms then
            count("r", key, min_ms, now_ms)
        end
        total("allowed", key)
        return
    end
    ctx.msv_rejected = true
    total("rejected", key)
    return reject()
end

-- {"<namespace>/<name>": {"requests": n, "retries_allowed": n, "retries_rejected": n}, ...}
function M.report()
    local backends, names = {}, {}
    for _, k in ipairs(dict:get_keys(0)) do
        local what, key = k:match("^total|(%a+)|([%w%-]+/[%w%-]+)$")
        if what then
            if not backends[key] then
                backends[key] = {requests = 0, allowed = 0, rejected = 0}
                names[#names + 1] = key
            end
            backends[key][what] = dict:get(k) or 0
        end
    end
    table.sort(names)
    local parts = {}
    for i, key in ipairs(names) do
        local b = backends[key]
        parts[i] = string.format(
            '"%s": {"requests": %d, "retries_allowed": %d, "retries_rejected": %d}',
            key, b.requests, b.allowed, b.rejected)
    end
    ngx.say("{" .. table.concat(parts, ", ") .. "}")
end

return M
