#!/usr/bin/env python3
"""A server that speaks just enough of Switchboard's protocol to break it on purpose, for
scripts/test-k6: it checks that scripts/k6/chat.js sees each contract problem, error and slow
answer it claims to see.

    python3 scripts/k6/fake_server.py PORT_FILE

Listens on 127.0.0.1 and a free port, writes the port to PORT_FILE, and serves until killed:
GET /health/live; POST /api/auth/register (201) and /api/auth/login (200, the email as the
access token); GET /ws with `Authorization: Bearer <email>`. What a user's messages get
depends on the user's number N in its email (`...-N@...`):

- user 0: a run with a seq gap (1, then 3), a duplicate (3 again), its final event, then one more
  event of the run after its final event; its second message's run ends 3.1 s after
  `message_accepted` (over the SLA's 3 s);
- user 1: a run that starts and never ends (no final event);
- user 2: the message is refused with `error` `rate_limited`.

Every other message gets a well-formed run of two events. Standard library only.
"""

import base64
import hashlib
import json
import os
import re
import socket
import socketserver
import struct
import sys
import threading
import time

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def stamp():
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        try:
            self.serve_requests()
        except (ConnectionError, OSError):
            pass

    def serve_requests(self):
        while True:
            request_line = self.rfile.readline().decode("latin-1").strip()
            if not request_line:
                return
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            while True:
                line = self.rfile.readline().decode("latin-1").strip()
                if not line:
                    break
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = self.rfile.read(int(headers.get("content-length", "0") or 0))
            if path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
                self.websocket(headers)
                return
            self.answer(method, path, body)

    def reply(self, status, body):
        data = json.dumps(body).encode()
        reason = {200: "OK", 201: "Created", 404: "Not Found"}[status]
        self.wfile.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        self.wfile.flush()

    def answer(self, method, path, body):
        if method == "GET" and path == "/health/live":
            self.reply(200, {"status": "ok"})
        elif method == "POST" and path == "/api/auth/register":
            email = json.loads(body)["email"]
            self.reply(201, {"user": {"id": "usr_" + email, "email": email}})
        elif method == "POST" and path == "/api/auth/login":
            email = json.loads(body)["email"]
            self.reply(200, {"access_token": email, "refresh_token": email, "token_type": "Bearer",
                             "expires_in": 900, "user": {"id": "usr_" + email, "email": email}})
        else:
            self.reply(404, {"error": {"code": "not_found", "message": f"no {method} {path} here"}})

    # --- the socket

    def websocket(self, headers):
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + WS_GUID).encode()).digest())
        self.wfile.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.wfile.flush()
        token = headers.get("authorization", "").removeprefix("Bearer ")
        found = re.search(r"-(\d+)@", token)
        self.user = int(found.group(1)) if found else -1
        self.seq = 0
        self.messages = 0
        self.lock = threading.Lock()
        self.send({"type": "connection_established", "payload": {
            "connection_id": "conn_1", "user_id": "usr_" + token, "protocol": "switchboard.v1",
            "server_time": stamp(), "heartbeat_interval_ms": 25000, "last_seq": 0}})
        while True:
            frame = self.read_frame()
            if frame is None:
                return
            message = json.loads(frame)
            if message.get("type") == "user_message":
                self.messages += 1
                self.on_message(message["payload"])

    def read_frame(self):
        head = self.rfile.read(2)
        if len(head) < 2:
            return None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack(">H", self.rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self.rfile.read(8))[0]
        mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
        if opcode == 0x8:  # close: answer it and end
            self.write_frame(0x8, data[:2])
            return None
        if opcode == 0x9:  # ping
            self.write_frame(0xA, data)
            return self.read_frame()
        return data.decode()

    def write_frame(self, opcode, data):
        length = len(data)
        if length < 126:
            head = struct.pack(">BB", 0x80 | opcode, length)
        elif length < 65536:
            head = struct.pack(">BBH", 0x80 | opcode, 126, length)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 127, length)
        with self.lock:
            self.wfile.write(head + data)
            self.wfile.flush()

    def send(self, frame):
        self.write_frame(0x1, json.dumps(frame).encode())

    def event(self, run, kind, payload, seq=None):
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.send({"type": kind, "seq": seq, "run_id": run, "thread_id": "thr_1", "agent_name": "supervisor",
                   "timestamp": stamp(), "trace_id": "0" * 32, "payload": payload})

    def final(self, run, seq=None):
        self.event(run, "agent_completed", {"status": "completed", "duration_ms": 1, "final": True,
                                            "result": {"text": "done"}}, seq)

    def on_message(self, payload):
        ref = payload.get("client_message_id")
        run = f"run_{self.user}_{self.messages}"
        if self.messages == 1 and self.user == 2:
            self.send({"type": "error", "payload": {"code": "rate_limited", "ref": ref,
                                                    "message": "You sent too many messages; wait a minute."}})
            return
        self.send({"type": "message_accepted", "payload": {"client_message_id": ref, "message_id": "msg_1",
                                                           "thread_id": "thr_1", "run_id": run}})
        self.event(run, "agent_started", {"task": payload.get("text", "")})
        if self.messages == 1 and self.user == 0:
            self.seq += 1  # seq 2 is never sent: a gap
            self.event(run, "agent_thinking", {"text": "thinking"})
            self.event(run, "agent_thinking", {"text": "again"}, seq=self.seq)  # a duplicate
            self.final(run)
            self.event(run, "partial_result", {"delta": "late"})  # after the final event
        elif self.messages == 2 and self.user == 0:
            time.sleep(3.1)  # over the SLA's 3 s
            self.final(run)
        elif self.messages == 1 and self.user == 1:
            pass  # the run never ends
        else:
            self.final(run)

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: fake_server.py PORT_FILE")
    server = Server(("127.0.0.1", 0), Handler)
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with open(sys.argv[1] + ".new", "w") as out:
        out.write(f"{server.server_address[1]}\n")
    os.replace(sys.argv[1] + ".new", sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
