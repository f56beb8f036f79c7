/*
 * wire.h - the builtin engine's TCP framing (little-endian).
 *
 * Every frame starts with a 32-byte header:
 *   u32 magic "KVPF"  u8 version  u8 op  u16 flags
 *   u32 body_len      op-specific fields that follow the header (bounded per op)
 *   i32 status        replies: a KVP status
 *   u64 req_id        the initiator's post id (unique per post, never reused)
 *   u64 payload_len   raw data bytes after the body (WRITE and READ_DATA only)
 *
 * Ops and bodies:
 *   HELLO      initiator -> target, first frame: u8[16] token the initiator expects the
 *              target to have (from its metadata; a restarted target has another and
 *              refuses), u8[16] initiator token, u8 name_len, name.
 *   HELLO_OK   target -> initiator.   HELLO_ERR: status + message body.
 *   WRITE      body u64 addr, then payload_len bytes that land at addr (validated
 *              against the target's registrations first; refused data is read and
 *              dropped). flags & FLAG_ACK on the last frame of a request.
 *              flags & FLAG_VRAM: addr is VRAM of the target's CUDA device given in the
 *              status field (the target stages it through pinned host memory).
 *   WRITE_ACK  after the FLAG_ACK frame landed: status of the request (first error of
 *              any of its frames) and the message as body.
 *   READ_REQ   body u32 first_piece, u32 count, count x (u64 addr, u64 len).
 *              flags & FLAG_VRAM: the ranges are VRAM of the device in the status field.
 *   READ_DATA  body u32 piece, u32 0, then the piece's bytes.
 *   READ_END   after the last READ_DATA of a request (the target sends it once the
 *              READ_REQ frame with FLAG_ACK was served): status + message body. Not
 *              SUCCESS when a served range was deregistered while its bytes were going
 *              out (the rest of that piece went as zeros to keep the stream framed):
 *              the initiator completes a READ on READ_END only, never on its data.
 *   READ_ERR   status + message body; no data follows for that request.
 *   NOTIF      body = notification bytes (<= 64 KiB); the sender's name is the one of
 *              the HELLO of that connection.
 *   PROVE      initiator -> target, after HELLO: u8[16] nonce. The initiator claims the
 *              target is on its host and opened the target's agent page through /proc.
 *   PROVE_ACK  target -> initiator: u8[16] tag = keyed hash (under the page's secret) of
 *              nonce and both tokens; the initiator compares it with its own. Only a
 *              process that can read the page knows the secret, which never goes on the
 *              wire: a listener elsewhere cannot answer, so locality is proven, not
 *              claimed.
 * Anything else (bad magic, version, op, a length over its bound, a frame before HELLO)
 * closes the connection; requests pending on it fail with KVP_ERR_REMOTE_DISCONNECT.
 */
#ifndef KVP_WIRE_H
#define KVP_WIRE_H
#include "common.h"

#define W_MAGIC 0x4650564Bu /* "KVPF" */
#define W_VERSION 2
#define W_HDR 32

enum w_op {
    W_HELLO = 1,
    W_HELLO_OK = 2,
    W_HELLO_ERR = 3,
    W_WRITE = 4,
    W_WRITE_ACK = 5,
    W_READ_REQ = 6,
    W_READ_DATA = 7,
    W_READ_ERR = 8,
    W_NOTIF = 9,
    W_READ_END = 10,
    W_PROVE = 11,
    W_PROVE_ACK = 12,
    W_OP_MAX = 12
};

#define W_FLAG_ACK 1u
#define W_FLAG_VRAM 2u

#define W_MAX_PAYLOAD (1ULL << 40)
#define W_MAX_MSG 1024u
#define W_READ_PIECES_PER_FRAME 65536u

typedef struct w_hdr {
    uint8_t op;
    uint16_t flags;
    uint32_t body_len;
    int32_t status;
    uint64_t req_id;
    uint64_t payload_len;
} w_hdr;

static inline void w_hdr_put(uint8_t *p, const w_hdr *h) {
    kvp_put_u32(p, W_MAGIC);
    p[4] = W_VERSION;
    p[5] = h->op;
    kvp_put_u16(p + 6, h->flags);
    kvp_put_u32(p + 8, h->body_len);
    kvp_put_u32(p + 12, (uint32_t)h->status);
    kvp_put_u64(p + 16, h->req_id);
    kvp_put_u64(p + 24, h->payload_len);
}

/* Largest body accepted for an op (0: none allowed). */
static inline uint32_t w_body_max(uint8_t op) {
    switch (op) {
    case W_HELLO: return 16 + 16 + 1 + 255;
    case W_HELLO_OK: return 0;
    case W_HELLO_ERR: return W_MAX_MSG;
    case W_WRITE: return 8;
    case W_WRITE_ACK: return W_MAX_MSG;
    case W_READ_REQ: return 8 + 16 * W_READ_PIECES_PER_FRAME;
    case W_READ_DATA: return 8;
    case W_READ_ERR: return W_MAX_MSG;
    case W_NOTIF: return 64u * 1024u;
    case W_READ_END: return W_MAX_MSG;
    case W_PROVE: return 16;
    case W_PROVE_ACK: return 16;
    default: return 0;
    }
}

/* Parses and checks a header; returns false (with why) when the connection must close. */
static inline bool w_hdr_get(const uint8_t *p, w_hdr *h, const char **why) {
    if (kvp_get_u32(p) != W_MAGIC) {
        *why = "bad frame magic";
        return false;
    }
    if (p[4] != W_VERSION) {
        *why = "unsupported frame version";
        return false;
    }
    h->op = p[5];
    h->flags = kvp_get_u16(p + 6);
    h->body_len = kvp_get_u32(p + 8);
    h->status = (int32_t)kvp_get_u32(p + 12);
    h->req_id = kvp_get_u64(p + 16);
    h->payload_len = kvp_get_u64(p + 24);
    if (h->op < W_HELLO || h->op > W_OP_MAX) {
        *why = "unknown frame op";
        return false;
    }
    if (h->body_len > w_body_max(h->op)) {
        *why = "frame body longer than its bound";
        return false;
    }
    bool pay_ok = h->op == W_WRITE || h->op == W_READ_DATA;
    if ((!pay_ok && h->payload_len != 0) || h->payload_len > W_MAX_PAYLOAD) {
        *why = "frame payload length out of bounds";
        return false;
    }
    return true;
}

#endif
