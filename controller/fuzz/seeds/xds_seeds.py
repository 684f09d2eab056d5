# Writes the binary seeds of xds_sotw and xds_delta (run from controller/fuzz/seeds): an
# identity byte, then frames of a 2-byte big-endian length and an encoded request.
import struct
def varint(n):
    out=b''
    while True:
        b=n&0x7f; n>>=7
        if n: out+=bytes([b|0x80])
        else: return out+bytes([b])
def fld(tag, data):  # length-delimited
    if isinstance(data,str): data=data.encode()
    return varint(tag<<3|2)+varint(len(data))+data
def node(id): return fld(1,id)
def status(msg): return varint(1<<3|0)+varint(13)+fld(2,msg)
CL="type.googleapis.com/envoy.config.cluster.v3.Cluster"
EP="type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LI="type.googleapis.com/envoy.config.listener.v3.Listener"
RT="type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
def sotw(node_id=None, version="", names=(), type_url="", nonce="", err=None):
    b=b''
    if version: b+=fld(1,version)
    if node_id is not None: b+=fld(2,node(node_id))
    for n in names: b+=fld(3,n)
    if type_url: b+=fld(4,type_url)
    if nonce: b+=fld(5,nonce)
    if err is not None: b+=fld(6,status(err))
    return b
def delta(node_id=None, type_url="", sub=(), unsub=(), initial=None, nonce="", err=None):
    b=b''
    if node_id is not None: b+=fld(1,node(node_id))
    if type_url: b+=fld(2,type_url)
    for n in sub: b+=fld(3,n)
    for n in unsub: b+=fld(4,n)
    for k,v in (initial or {}).items(): b+=fld(5, fld(1,k)+fld(2,v))
    if nonce: b+=fld(6,nonce)
    if err is not None: b+=fld(7,status(err))
    return b
def frames(auth, *fs):
    out=bytes([auth])
    for f in fs:
        out+=struct.pack('>H',len(f))+f
    return out
PUB=b''; RETRY=b'\x00'
seeds={
 'xds_sotw/ack-flow.bin': frames(0, sotw("ns/gw",type_url=CL), sotw("ns/gw",type_url=CL,nonce="1",version="x"), sotw(type_url=EP,names=["a","b"]), sotw(type_url=EP,names=["a"],nonce="2"), PUB, sotw(type_url=CL,nonce="3")),
 'xds_sotw/nack-transient.bin': frames(1, sotw("ns/gw",type_url=LI), sotw(type_url=LI,nonce="1",err="background fetch in progress"), RETRY, sotw(type_url=LI,nonce="2"), PUB),
 'xds_sotw/wrong-node.bin': frames(1, sotw("other/gw",type_url=CL)),
 'xds_sotw/wildcard-and-names.bin': frames(0, sotw("other/gw",type_url=RT,names=["r","*"]), sotw(type_url=RT,names=["s"],nonce="1"), sotw(type_url=CL,names=[]), PUB, PUB),
 'xds_delta/ack-flow.bin': frames(0, delta("ns/gw",type_url=CL), delta(type_url=CL,nonce="1"), delta(type_url=EP,sub=["a","zz"]), delta(type_url=EP,unsub=["a"],nonce="2"), PUB, delta(type_url=CL,nonce="3")),
 'xds_delta/initial-versions.bin': frames(1, delta("ns/gw",type_url=CL,initial={"a":"deadbeef","gone":"1"}), delta(type_url=RT,sub=["r","*"]), delta(type_url=RT,nonce="2",err="background fetch in progress"), RETRY, PUB),
 'xds_delta/no-gateway.bin': frames(2, delta("ns/gw",type_url=CL)),
 'xds_delta/unsubscribe-wildcard.bin': frames(0, delta("ns/gw",type_url=LI), delta(type_url=LI,unsub=["*"],sub=["l"],nonce="1"), PUB),
}
for p,b in seeds.items():
    open(p,'wb').write(b)
