// A stock js-libp2p peer with js-libp2p's default TCP stack (TCP, Noise, yamux), identify and
// ping, for crates/node/tests/interop_js.rs.
//   node peer.mjs dial <multiaddr>   dial a node, ping it, wait for its identify; print JSON
//   node peer.mjs listen             listen on loopback, print the address, wait until a
//                                    Punchgate node has connected and identified; print JSON
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { multiaddr } from '@multiformats/multiaddr'

// Node.js 20 lacks Promise.withResolvers (Node.js 22 has it), which a dependency of js-libp2p 2
// calls.
Promise.withResolvers ??= () => {
  let resolve, reject
  const promise = new Promise((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}

const [mode, target] = process.argv.slice(2)
const fail = (why) => { console.error(why); process.exit(1) }
setTimeout(() => fail('no result within 20 s'), 20000).unref()

const node = await createLibp2p({
  addresses: { listen: mode === 'listen' ? ['/ip4/127.0.0.1/tcp/0'] : [] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), ping: ping() },
})

const identified = new Promise((resolve) => {
  node.addEventListener('peer:identify', (evt) => {
    if ((evt.detail.agentVersion ?? '').startsWith('punchgate/')) resolve(evt.detail)
  })
})

if (mode === 'dial') {
  const addr = multiaddr(target)
  const rtt = await node.services.ping.ping(addr)
  const info = await identified
  console.log(JSON.stringify({ rtt, agent: info.agentVersion, peer: info.peerId.toString() }))
} else if (mode === 'listen') {
  console.log(`listening on ${node.getMultiaddrs()[0].toString()}`)
  const info = await identified
  const rtt = await node.services.ping.ping(info.peerId)
  console.log(JSON.stringify({ rtt, agent: info.agentVersion, peer: info.peerId.toString() }))
} else {
  fail(`unknown mode '${mode}': dial <multiaddr> or listen`)
}
await node.stop()
process.exit(0)
