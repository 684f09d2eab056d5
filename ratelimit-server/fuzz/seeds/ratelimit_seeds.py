# Writes the binary seeds of ratelimit_server_request and ratelimit_server_redact.
def varint(n):
    out = b''
    while True:
        b = n & 0x7f; n >>= 7
        if n: out += bytes([b | 0x80])
        else: return out + bytes([b])
def ld(tag, data):
    if isinstance(data, str): data = data.encode()
    return varint(tag << 3 | 2) + varint(len(data)) + data
def vi(tag, n): return varint(tag << 3) + varint(n)
def entry(k, v): return ld(1, ld(1, k) + ld(2, v))
def desc(entries, override=None, hits=None):
    b = b''.join(entry(k, v) for k, v in entries)
    if override: b += ld(2, vi(1, override[0]) + vi(2, override[1]))
    if hits is not None: b += ld(3, vi(1, hits))
    return ld(2, b)
def req(domain, descs, hits=None):
    b = ld(1, domain) + b''.join(descs)
    if hits is not None: b += vi(3, hits)
    return b
seeds = {
    'ratelimit_server_request/config-limits.bin': req('portcullis', [desc([('rule', 'per-key-global')]), desc([('client_ip', '10.0.0.1'), ('path', '/login')]), desc([('client_ip', '10.0.0.1')]), desc([('client_ip', '10.0.0.1')]), desc([('free', 'x')]), desc([('shadow', 's')])]),
    'ratelimit_server_request/override-and-hits.bin': req('portcullis', [desc([('api_key', 'k1')], override=(5, 2), hits=3), desc([('api_key', 'k2')], override=(5, 9)), desc([('a', 'b'), ('ab', '')])], hits=2),
    'ratelimit_server_request/override-refused.bin': req('other', [desc([('k', 'v')], override=(1, 1))]),
    'ratelimit_server_request/key-cap.bin': req('other', [desc([('k', str(i))]) for i in range(5)]),
    'ratelimit_server_request/empty-domain.bin': req('', [desc([('k', 'v')])]),
    'ratelimit_server_redact/userinfo.bin': b'\x00' + b'127.0.0.1:6379/0',
    'ratelimit_server_redact/query-password.bin': b'\x02' + b'redis.example.com:6380/1?user=u',
    'ratelimit_server_redact/unix-pass.bin': b'\x03' + b'/run/redis.sock',
    'ratelimit_server_redact/raw.bin': b'\x04' + b'redis://u:p%40ss@h:1/2?password=x&pass=y',
}
for p, b in seeds.items():
    open(p, 'wb').write(b)
