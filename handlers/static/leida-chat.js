/*!
 * leida-chat.js — a dependency-free browser client for the leida-chat server.
 *
 * One LeidaChat instance = one signed account (a customer or a radar user)
 * talking to one conversation, or (radar side, peerId null) to the whole
 * inbox. It signs every request (user_id, timestamp, rand_str =
 * md5(timestamp + token)), keeps one long-poll open that always resumes from
 * the highest message id it has seen (`last_id`), backs off with jitter on
 * errors, de-duplicates messages by id, and retries sends with the same
 * client_msg_id so the server stores them once. sendFile() uploads a picture
 * or a video (XMLHttpRequest, for its progress events) to chat/upload/0 and
 * sends it as a message the same way. recall() takes back one of the signer's
 * own messages (撤回): its notice comes back through the long-poll to both
 * sides, and onRecall tells each page which bubble to remove. typing() tells
 * the other side "对方正在输入…" (its onTyping), at most once every 3 s.
 * Plain ES2017 + fetch: load it
 * with <script src="/static/leida-chat.js"> (global `LeidaChat`) or require()
 * it (module.exports).
 *
 * Usage (customer H5 page talking to radar user 1):
 *
 *   var chat = new LeidaChat({
 *     side: "customer", accountId: 2, token: "9ab0…", peerId: 1,
 *     onMessages: function (items) { items.forEach(render); },
 *     onState: function (state, delayMs) { showState(state, delayMs); },
 *     onError: function (err) { console.warn(err.code, err.msg); },
 *     onRecall: function (recalledId, notice) { removeBubble(recalledId); },  // the notice: a grey line
 *     onTyping: function (typing) { showTyping(5000); }     // {customer_id, user_id, side}
 *   });
 *   chat.history({ currentPage: 1, length: 20 })   // newest page, oldest first
 *     .then(function (data) { data.ret_data.forEach(render); })
 *     .then(function () { chat.start(); });         // polls from the newest id
 *   chat.send("你好").then(function (r) { console.log(r.id, r.dateTime); });
 *   chat.send({ info_type: 4, url: "https://example.com/a.png" });
 *   // a picture or video from <input type=file>: upload (with progress), then send it
 *   chat.sendFile(input.files[0], {
 *     onProgress: function (p) { bar.style.width = (100 * p.loaded / p.total) + "%"; },
 *     clientMsgId: id                                 // optional; reuse it to retry
 *   }).then(function (r) { console.log(r.id, r.upload.url); },
 *           function (err) { alert(LeidaChat.uploadErrorText(err)); });  // the server's reason
 *   chat.unreadCount().then(function (n) { badge.textContent = n; });
 *   // 撤回 one of our own messages (within chat.recall_seconds, 120 s by default)
 *   chat.recall(messageId).then(function (r) { console.log(r.id, r.recalled_id); },
 *                               function (err) { alert(err.reason + ": " + err.message); });
 *   input.addEventListener("input", function () { chat.typing(); });  // throttled: 1 POST / 3 s
 *   // radar console: one inbox poll, send to a chosen customer
 *   var inbox = new LeidaChat({ side: "radar", accountId: 1, token: "…", peerId: null,
 *                               onMessages: route });
 *   inbox.contacts({ currentPage: 1, length: 50 }).then(showContacts).then(function () { inbox.start(); });
 *   inbox.send("您好", { customerId: 7 });
 *   inbox.sendFile(file, { customerId: 7, onProgress: showProgress });
 *   inbox.recall(messageId, { customerId: 7 });
 *   inbox.typing({ customerId: 7 });
 *   window.addEventListener("pagehide", function () { chat.stop(); });
 */
(function (root, factory) {
  "use strict";
  var LeidaChat = factory();
  if (typeof module === "object" && module && module.exports) {
    module.exports = LeidaChat;
  }
  if (root) {
    root.LeidaChat = LeidaChat;
  }
})(
  typeof globalThis !== "undefined" ? globalThis
    : typeof window !== "undefined" ? window
    : typeof self !== "undefined" ? self : this,
  function () {
    "use strict";

    /* ------------------------------------------------------------------ *
     * MD5 (RFC 1321) over the UTF-8 bytes of a string, lowercase hex.
     * ------------------------------------------------------------------ */

    // K[i] = floor(abs(sin(i + 1)) * 2^32), written out rather than computed.
    var MD5_K = [
      0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
      0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
      0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
      0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
      0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
      0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
      0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
      0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391
    ];
    // per-round left-rotation amounts
    var MD5_S = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];

    /** The UTF-8 bytes of a JS string; a lone surrogate becomes U+FFFD (as TextEncoder does). */
    function utf8Bytes(str) {
      var out = [];
      for (var i = 0; i < str.length; i++) {
        var c = str.charCodeAt(i);
        if (c >= 0xd800 && c <= 0xdbff && i + 1 < str.length) {
          var next = str.charCodeAt(i + 1);
          if (next >= 0xdc00 && next <= 0xdfff) {
            c = 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00);
            i++;
          } else {
            c = 0xfffd;
          }
        } else if (c >= 0xd800 && c <= 0xdfff) {
          c = 0xfffd;
        }
        if (c < 0x80) {
          out.push(c);
        } else if (c < 0x800) {
          out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
        } else if (c < 0x10000) {
          out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
        } else {
          out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
        }
      }
      return out;
    }

    function md5Bytes(bytes) {
      var n = bytes.length;
      var blocks = ((n + 8) >>> 6) + 1; // 64-byte blocks after padding
      var words = new Array(blocks * 16);
      var i;
      for (i = 0; i < words.length; i++) words[i] = 0;
      for (i = 0; i < n; i++) words[i >> 2] |= bytes[i] << ((i % 4) * 8);
      words[n >> 2] |= 0x80 << ((n % 4) * 8);
      words[blocks * 16 - 2] = (n * 8) % 4294967296 | 0; // message length in bits, low word
      words[blocks * 16 - 1] = Math.floor(n / 536870912) | 0; // high word

      var a0 = 0x67452301 | 0, b0 = 0xefcdab89 | 0, c0 = 0x98badcfe | 0, d0 = 0x10325476 | 0;
      for (var off = 0; off < words.length; off += 16) {
        var a = a0, b = b0, c = c0, d = d0;
        for (i = 0; i < 64; i++) {
          var f, g;
          if (i < 16) {
            f = (b & c) | (~b & d);
            g = i;
          } else if (i < 32) {
            f = (d & b) | (~d & c);
            g = (5 * i + 1) % 16;
          } else if (i < 48) {
            f = b ^ c ^ d;
            g = (3 * i + 5) % 16;
          } else {
            f = c ^ (b | ~d);
            g = (7 * i) % 16;
          }
          var s = MD5_S[(i >> 4) * 4 + (i % 4)];
          f = (f + a + MD5_K[i] + words[off + g]) | 0;
          a = d;
          d = c;
          c = b;
          b = (b + ((f << s) | (f >>> (32 - s)))) | 0;
        }
        a0 = (a0 + a) | 0;
        b0 = (b0 + b) | 0;
        c0 = (c0 + c) | 0;
        d0 = (d0 + d) | 0;
      }
      var hex = "";
      var state = [a0, b0, c0, d0];
      for (i = 0; i < 4; i++) {
        for (var k = 0; k < 4; k++) {
          var byte = (state[i] >>> (k * 8)) & 0xff;
          hex += (byte < 16 ? "0" : "") + byte.toString(16);
        }
      }
      return hex;
    }

    /** md5(string) -> 32 lowercase hex chars of the MD5 of the string's UTF-8 bytes. */
    function md5(str) {
      return md5Bytes(utf8Bytes(String(str)));
    }

    /* ------------------------------------------------------------------ *
     * Small helpers
     * ------------------------------------------------------------------ */

    var PATHS = {
      customer: {
        getmsg: "/zhugeleida/gongzhonghao/chat/getmsg/0",
        send: "/zhugeleida/gongzhonghao/chat/send_msg/0",
        upload: "/zhugeleida/gongzhonghao/chat/upload/0",
        history: "/zhugeleida/gongzhonghao/chat",
        unread: "/zhugeleida/gongzhonghao/chat/query_num/0",
        recall: "/zhugeleida/gongzhonghao/chat/recall/0",
        typing: "/zhugeleida/gongzhonghao/chat/typing/0"
      },
      radar: {
        getmsg: "/zhugeleida/qiyeweixin/chat/getmsg/0",
        send: "/zhugeleida/qiyeweixin/chat/send_msg/0",
        upload: "/zhugeleida/qiyeweixin/chat/upload/0",
        history: "/zhugeleida/qiyeweixin/chat",
        unread: "/zhugeleida/qiyeweixin/chat/query_num/0",
        contacts: "/zhugeleida/qiyeweixin/contact",
        recall: "/zhugeleida/qiyeweixin/chat/recall/0",
        typing: "/zhugeleida/qiyeweixin/chat/typing/0"
      }
    };

    var POLL_BACKOFF_MIN_MS = 1000;
    var POLL_BACKOFF_MAX_MS = 30000;
    var SEND_RETRIES = 4; // after the first attempt
    var SEND_BACKOFF_MIN_MS = 500;
    var SEND_BACKOFF_MAX_MS = 8000;
    var REQUEST_TIMEOUT_MS = 20000; // non-poll requests
    var POLL_GRACE_MS = 15000; // a held poll may take `wait` + this before we give up on it
    var SEEN_MAX = 5000; // ids remembered for de-duplication
    var CLOCK_SKEW_TOLERANCE_MS = 120000;
    var UPLOAD_IDLE_TIMEOUT_MS = 60000; // an upload that makes no progress for this long fails
    var UPLOADS_REMEMBERED = 50; // finished uploads kept for a retried sendFile (by client_msg_id)
    var TYPING_INTERVAL_MS = 3000; // typing(): at most one POST per conversation this often
    var TYPING_TIMEOUT_MS = 5000; // a typing POST is worth nothing later than this
    var TYPING_REMEMBERED = 100; // conversations whose last typing POST time is kept
    var TIP = 3; // send_type of the server's own words in a conversation (a grey line)
    var RECALL_NOTICE = 7; // info_type of a tip saying a message was recalled (recalled_id)

    function noop() {}

    /**
     * A backoff delay: min * 2^attempt plus up to 25 % jitter; once that passes
     * `max`, a jittered 80–100 % of max. So the poll waits ~1, 2, 4, 8, 16 s,
     * then 24–30 s, never less than 1 s nor more than 30 s.
     */
    function backoffDelay(attempt, min, max) {
      var delay = min * Math.pow(2, Math.min(attempt, 20)) * (1 + 0.25 * Math.random());
      if (delay > max) delay = max * (0.8 + 0.2 * Math.random());
      return Math.round(delay);
    }

    function randomHex(bytes) {
      var out = "";
      var c = typeof crypto !== "undefined" && crypto && crypto.getRandomValues ? crypto : null;
      var buf = new Uint8Array(bytes);
      if (c) {
        c.getRandomValues(buf);
      } else {
        for (var j = 0; j < bytes; j++) buf[j] = Math.floor(Math.random() * 256);
      }
      for (var i = 0; i < bytes; i++) out += (buf[i] < 16 ? "0" : "") + buf[i].toString(16);
      return out;
    }

    /** A fresh idempotency key for send_msg (at most 64 chars; these are 35). */
    function newClientMsgId() {
      return "lc-" + randomHex(16);
    }

    function encodeParams(params) {
      var parts = [];
      Object.keys(params).forEach(function (key) {
        var value = params[key];
        if (value === undefined || value === null) return;
        parts.push(encodeURIComponent(key) + "=" + encodeURIComponent(String(value)));
      });
      return parts.join("&");
    }

    /** An Error with the envelope's `code`/`msg`/`data` and the HTTP `status` (0: none). */
    function chatError(code, msg, status, data) {
      var err = new Error(typeof msg === "string" && msg ? msg : String(code));
      err.code = code;
      err.msg = msg;
      err.status = status || 0;
      err.data = data === undefined ? null : data;
      return err;
    }

    function isRetryable(err) {
      return err.code === "network" || err.code === "timeout" || err.status === 429 || err.status >= 500;
    }

    /** A recall notice: the tip (send_type 3, info_type 7) whose `recalled_id` was taken back. */
    function isRecallNotice(item) {
      return !!item && Number(item.send_type) === TIP && Number(item.info_type) === RECALL_NOTICE &&
        item.recalled_id !== undefined && item.recalled_id !== null;
    }

    /** A recalled message as history (or a resumed poll) shows it: id, time and sender, no content. */
    function isRecalled(item) {
      return !!item && item.recalled === true;
    }

    function maxId(items, start) {
      var top = start;
      for (var i = 0; i < items.length; i++) {
        var id = items[i] && Number(items[i].id);
        if (id > top) top = id;
      }
      return top;
    }

    /* ------------------------------------------------------------------ *
     * LeidaChat
     * ------------------------------------------------------------------ */

    /**
     * @param {object} options
     *   baseUrl    server origin ("" = same origin)
     *   side       "customer" | "radar"
     *   accountId  id of the signing account (the customer, or the radar user)
     *   token      that account's secret token
     *   peerId     customer side: the radar user id (required);
     *              radar side: a customer id, or null for the whole inbox
     *   wait       long-poll hold in seconds (default 25)
     *   lastId     optional starting cursor (default 0; history()/contacts() raise it)
     *   onMessages function(items)          new messages, oldest first, each id once
     *   onState    function(state, delayMs) "connecting" | "live" | "retrying" | "stopped"
     *   onError    function(err)            err.code / err.msg / err.status / err.data
     *   onRecall   function(recalledId, notice) a recall notice came (after onMessages had it):
     *                                       remove the bubble of message `recalledId` if shown
     *   onTyping   function(typing)         the other side is typing: {customer_id, user_id,
     *                                       side: "customer" | "radar_user"}; show it a few seconds
     *   fetch      optional fetch implementation (tests)
     *   XMLHttpRequest optional XMLHttpRequest constructor for sendFile (tests)
     */
    function LeidaChat(options) {
      if (!(this instanceof LeidaChat)) return new LeidaChat(options);
      var o = options || {};
      if (o.side !== "customer" && o.side !== "radar") {
        throw new Error('LeidaChat: side must be "customer" or "radar"');
      }
      if (o.accountId === undefined || o.accountId === null || o.accountId === "") {
        throw new Error("LeidaChat: accountId is required");
      }
      if (!o.token) throw new Error("LeidaChat: token is required");
      var peer = o.peerId === undefined || o.peerId === "" ? null : o.peerId;
      if (o.side === "customer" && peer === null) {
        throw new Error("LeidaChat: peerId (the radar user id) is required on the customer side");
      }
      this.baseUrl = String(o.baseUrl || "").replace(/\/+$/, "");
      this.side = o.side;
      this.accountId = o.accountId;
      this.token = String(o.token);
      this.peerId = peer;
      this.wait = typeof o.wait === "number" && o.wait >= 0 ? o.wait : 25;
      this.onMessages = typeof o.onMessages === "function" ? o.onMessages : noop;
      this.onState = typeof o.onState === "function" ? o.onState : noop;
      this.onError = typeof o.onError === "function" ? o.onError : noop;
      this.onRecall = typeof o.onRecall === "function" ? o.onRecall : noop;
      this.onTyping = typeof o.onTyping === "function" ? o.onTyping : noop;
      this.lastId = Number(o.lastId) > 0 ? Number(o.lastId) : 0;
      this.state = "stopped";
      this.running = false;

      var f = o.fetch || (typeof fetch === "function" ? fetch : null);
      if (!f) throw new Error("LeidaChat: fetch is not available");
      this._fetch = function (url, init) {
        return f(url, init);
      };
      this._seen = new Set();
      this._seenOrder = [];
      this._gen = 0; // bumped by start/stop: answers of an older generation are ignored
      this._attempt = 0; // consecutive poll failures
      this._quickEmpty = 0; // consecutive answers with nothing new that came back at once
      this._connected = false; // a poll answered since (re)connecting
      this._pollTimer = null;
      this._pollAbort = null;
      this._sleepers = []; // send backoff timers, cancelled by stop()
      this._clockOffset = 0; // server time - local time, when the phone's clock is far off
      this._onOnline = this._onOnline.bind(this);
      this._XHR = o.XMLHttpRequest || (typeof XMLHttpRequest === "function" ? XMLHttpRequest : null);
      this._uploads = new Map(); // client_msg_id -> the upload's data, for a retried sendFile
      this._typedAt = new Map(); // conversation -> when typing() last posted (ms)
    }

    /**
     * The sentence to show for a failed sendFile/send: the server's reason for a
     * refused file (data.file[0].message, or any field's first message), else its msg.
     */
    function uploadErrorText(err) {
      var data = err && err.data;
      if (data && typeof data === "object") {
        var keys = ["file"].concat(Object.keys(data));
        for (var i = 0; i < keys.length; i++) {
          var list = data[keys[i]];
          if (Array.isArray(list) && list[0] && typeof list[0].message === "string" && list[0].message) {
            return list[0].message;
          }
        }
      }
      return (err && typeof err.msg === "string" && err.msg) || (err && err.message) || "发送失败";
    }

    LeidaChat.md5 = md5;
    LeidaChat.uploadErrorText = uploadErrorText;
    LeidaChat.newClientMsgId = newClientMsgId;
    LeidaChat.isRecallNotice = isRecallNotice;
    LeidaChat.isRecalled = isRecalled;
    LeidaChat.version = "1.2.0";

    var proto = LeidaChat.prototype;

    /* ---------------- signing and requests ---------------- */

    /** The full signed URL of `path` with `params` (null/undefined params are left out). */
    proto.signedUrl = function (path, params) {
      var ts = String(Date.now() + this._clockOffset);
      var query = encodeParams({ user_id: this.accountId, timestamp: ts, rand_str: md5(ts + this.token) });
      var extra = encodeParams(params || {});
      return this.baseUrl + path + "?" + query + (extra ? "&" + extra : "");
    };

    /**
     * One signed request. Resolves with the envelope's `data` when code is 200;
     * rejects with chatError: code = envelope code (400, 402…), HTTP status
     * (404, 413, 503…), "network", "timeout", "aborted" or "bad_response".
     * `holder.abort` is set to a function that cancels this request.
     */
    proto._request = function (method, path, params, form, timeoutMs, holder, isRetry) {
      var self = this;
      var controller = typeof AbortController === "function" ? new AbortController() : null;
      var init = { method: method, credentials: "same-origin", cache: "no-store" };
      if (form) {
        init.body = encodeParams(form);
        init.headers = { "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8" };
      }
      if (controller) init.signal = controller.signal;
      var startedAt = Date.now();
      var url = this.signedUrl(path, params);

      return new Promise(function (resolve, reject) {
        var settled = false;
        var timer = null;
        function finish(fn, value) {
          if (settled) return;
          settled = true;
          if (timer) clearTimeout(timer);
          if (holder) holder.abort = noop;
          fn(value);
        }
        function cancel(code) {
          if (controller) {
            try {
              controller.abort();
            } catch (e) { /* ignore */ }
          }
          finish(reject, chatError(code, code === "timeout" ? "请求超时" : "请求已取消", 0));
        }
        if (holder) holder.abort = function () { cancel("aborted"); };
        timer = setTimeout(function () { cancel("timeout"); }, timeoutMs);

        self._fetch(url, init).then(
          function (response) {
            var skewChanged = self._noteServerDate(response, startedAt);
            return response.text().then(function (text) {
              var body = null;
              try {
                body = text ? JSON.parse(text) : null;
              } catch (e) {
                body = null;
              }
              var ok = response.status === 200;
              if (body && typeof body === "object" && typeof body.code === "number") {
                if (ok && body.code === 200) return finish(resolve, body.data);
                // a rejected signature right after learning the phone's clock is off: sign again once
                if (ok && body.code === 400 && skewChanged && !isRetry) {
                  if (timer) clearTimeout(timer);
                  settled = true;
                  return self._request(method, path, params, form, timeoutMs, holder, true).then(resolve, reject);
                }
                var retryAfter = Number(response.headers && response.headers.get && response.headers.get("Retry-After"));
                var err = chatError(ok ? body.code : response.status, body.msg, response.status, body.data);
                if (retryAfter > 0) err.retryAfter = retryAfter;
                return finish(reject, err);
              }
              finish(reject, chatError(ok ? "bad_response" : response.status, "服务器响应无法解析", response.status));
            });
          }
        ).then(null, function (e) {
          finish(reject, chatError("network", (e && e.message) || "网络错误", 0));
        });
      });
    };

    /** Learn the clock offset from the Date header when the local clock is minutes off. */
    proto._noteServerDate = function (response, startedAt) {
      var header = response && response.headers && response.headers.get ? response.headers.get("Date") : null;
      var server = header ? Date.parse(header) : NaN;
      if (!(server > 0)) return false;
      var diff = server - startedAt;
      var next = Math.abs(diff) > CLOCK_SKEW_TOLERANCE_MS ? diff : 0;
      var changed = Math.abs(next - this._clockOffset) > CLOCK_SKEW_TOLERANCE_MS;
      this._clockOffset = next;
      return changed;
    };

    /* ---------------- the long-poll loop ---------------- */

    /** Start (or resume) the long-poll loop from `lastId`. No-op when already running. */
    proto.start = function () {
      if (this.running) return this;
      this.running = true;
      this._gen++;
      this._attempt = 0;
      this._quickEmpty = 0;
      this._connected = false;
      if (typeof window !== "undefined" && window.addEventListener) {
        window.addEventListener("online", this._onOnline);
      }
      this._setState("connecting");
      this._poll();
      return this;
    };

    /** Stop: abort the held request, clear every timer, cancel sends waiting to retry. */
    proto.stop = function () {
      var wasRunning = this.running;
      this.running = false;
      this._gen++;
      if (this._pollTimer) clearTimeout(this._pollTimer);
      this._pollTimer = null;
      if (this._pollAbort) this._pollAbort.abort();
      this._pollAbort = null;
      var sleepers = this._sleepers;
      this._sleepers = [];
      sleepers.forEach(function (s) { s.cancel(); });
      if (typeof window !== "undefined" && window.removeEventListener) {
        window.removeEventListener("online", this._onOnline);
      }
      if (wasRunning || this.state !== "stopped") this._setState("stopped");
      return this;
    };

    proto._setState = function (state, delayMs) {
      this.state = state;
      try {
        if (state === "retrying") this.onState(state, delayMs);
        else this.onState(state);
      } catch (e) {
        this._report(e);
      }
    };

    proto._report = function (err) {
      try {
        this.onError(err);
      } catch (e) {
        if (typeof console !== "undefined") console.error(e);
      }
    };

    proto._pollParams = function (wait) {
      // typing=1: the other side's typing answers the held request at once (data.typing)
      var params = { wait: wait, last_id: this.lastId, typing: 1 };
      if (this.side === "customer") params.u_id = this.peerId;
      else if (this.peerId !== null) params.customer_id = this.peerId;
      return params;
    };

    proto._poll = function () {
      var self = this;
      var gen = this._gen;
      this._pollTimer = null;
      // The first poll of a connection answers at once (wait=0): it proves the
      // connection and fetches anything newer than the cursor; then we hold.
      var wait = this._connected ? this.wait : 0;
      var holder = { abort: noop };
      this._pollAbort = holder;
      var startedAt = Date.now();
      this._request("GET", PATHS[this.side].getmsg, this._pollParams(wait), null,
        wait * 1000 + POLL_GRACE_MS, holder).then(
        function (data) {
          if (gen === self._gen) self._pollAnswered(data, Date.now() - startedAt);
        },
        function (err) {
          if (gen === self._gen) self._pollFailed(err);
        }
      );
    };

    proto._schedulePoll = function (delayMs) {
      var self = this;
      var gen = this._gen;
      this._pollTimer = setTimeout(function () {
        if (gen === self._gen && self.running) self._poll();
      }, delayMs);
    };

    proto._pollAnswered = function (data, elapsedMs) {
      var items = data && Array.isArray(data.ret_data) ? data.ret_data : [];
      this._pollAbort = null;
      this._attempt = 0;
      this._connected = true;
      this.lastId = maxId(items, this.lastId);
      if (this.state !== "live") this._setState("live");
      var gen = this._gen;
      var fresh = this._unseen(items);
      if (fresh.length) {
        try {
          this.onMessages(fresh);
        } catch (e) {
          this._report(e);
        }
        // then the bubbles the notices among them take back (a resumed page gets them in order too)
        for (var i = 0; i < fresh.length && gen === this._gen; i++) {
          if (!isRecallNotice(fresh[i])) continue;
          try {
            this.onRecall(fresh[i].recalled_id, fresh[i]);
          } catch (e) {
            this._report(e);
          }
        }
      }
      var typing = data && data.typing && typeof data.typing === "object" ? data.typing : null;
      if (typing && gen === this._gen) {
        try {
          this.onTyping(typing);
        } catch (e) {
          this._report(e);
        }
      }
      if (gen !== this._gen || !this.running) return; // a callback called stop() (or stop() and start())
      // An answer with nothing new that came back at once (wait=0, or the server
      // superseding this request for a newer one of the same account) must not
      // become a busy loop: after 3 in a row, wait a second before the next poll.
      // (The other side typing is news: the server sends that at most once a second.)
      if (!fresh.length && !typing && elapsedMs < 500) this._quickEmpty++;
      else this._quickEmpty = 0;
      if (this._quickEmpty >= 3) this._schedulePoll(1000);
      else this._poll();
    };

    proto._pollFailed = function (err) {
      this._pollAbort = null;
      this._connected = false;
      var delay = backoffDelay(this._attempt, POLL_BACKOFF_MIN_MS, POLL_BACKOFF_MAX_MS);
      if (err.retryAfter) delay = Math.min(POLL_BACKOFF_MAX_MS, Math.max(delay, err.retryAfter * 1000));
      this._attempt++;
      var gen = this._gen;
      this._report(err);
      if (gen !== this._gen || !this.running) return;
      this._setState("retrying", delay);
      if (gen === this._gen && this.running) this._schedulePoll(delay);
    };

    proto._onOnline = function () {
      // back online: do not sit out the rest of a long backoff
      if (this.running && this.state === "retrying" && this._pollTimer) {
        clearTimeout(this._pollTimer);
        this._schedulePoll(0);
      }
    };

    /** The items whose id was never handed out before (remembering them). */
    proto._unseen = function (items) {
      var out = [];
      for (var i = 0; i < items.length; i++) {
        var item = items[i];
        var id = item ? item.id : undefined;
        if (id === undefined || id === null) {
          out.push(item);
          continue;
        }
        if (this._seen.has(String(id))) continue;
        this._remember(id);
        out.push(item);
      }
      return out;
    };

    proto._remember = function (id) {
      var key = String(id);
      if (this._seen.has(key)) return;
      this._seen.add(key);
      this._seenOrder.push(key);
      if (this._seenOrder.length > SEEN_MAX) this._seen.delete(this._seenOrder.shift());
    };

    /* ---------------- sending ---------------- */

    /**
     * Send a message. `content`: an object such as {info_type: 1, msg: "你好"}
     * (stringified for you) or a plain string (= a text message).
     * opts: {customerId} (radar side: the recipient, default peerId),
     *       {clientMsgId} (reuse one to resend a message idempotently),
     *       {retries} (network/5xx retries, default 4).
     * Resolves with {id, dateTime}; rejects with an Error carrying code/msg/data
     * (and clientMsgId). code 400/402: the server refused; "network"/"timeout"/5xx:
     * every retry failed; "stopped": stop() was called during a backoff.
     */
    proto.send = function (content, opts) {
      var o = opts || {};
      var body = typeof content === "string" ? { info_type: 1, msg: content } : content;
      var clientMsgId = o.clientMsgId ? String(o.clientMsgId).slice(0, 64) : newClientMsgId();
      var retries = typeof o.retries === "number" && o.retries >= 0 ? o.retries : SEND_RETRIES;
      var form = { content: JSON.stringify(body), client_msg_id: clientMsgId };
      if (this.side === "customer") {
        form.u_id = this.peerId;
      } else {
        var customerId = o.customerId !== undefined && o.customerId !== null ? o.customerId : this.peerId;
        if (customerId === null) {
          var missing = chatError(402, "customerId is required to send from the inbox", 0, null);
          missing.clientMsgId = clientMsgId;
          return Promise.reject(missing);
        }
        form.customer_id = customerId;
      }
      return this._postRetrying(PATHS[this.side].send, form, retries, clientMsgId);
    };

    /**
     * POST `form` to `path`, retried on network errors, timeouts, 429 and 5xx
     * with a jittered backoff (safe only for requests the server stores once).
     * A rejection carries `clientMsgId` when one is given.
     */
    proto._postRetrying = function (path, form, retries, clientMsgId) {
      var self = this;
      function attempt(n) {
        return self._request("POST", path, null, form, REQUEST_TIMEOUT_MS, null).then(null, function (err) {
          if (clientMsgId !== undefined) err.clientMsgId = clientMsgId;
          if (!isRetryable(err) || n >= retries) throw err;
          var delay = backoffDelay(n, SEND_BACKOFF_MIN_MS, SEND_BACKOFF_MAX_MS);
          if (err.retryAfter) delay = Math.min(SEND_BACKOFF_MAX_MS, Math.max(delay, err.retryAfter * 1000));
          return self._sleep(delay, clientMsgId).then(function () { return attempt(n + 1); });
        });
      }
      return attempt(0);
    };

    /**
     * Recall (撤回) one of this account's own messages, within the server's
     * chat.recall_seconds (120 s by default) of its sending.
     * opts: {customerId} (radar side: the conversation, default peerId), {retries}
     * (network/5xx retries, default 4: a recall is stored once however often it is asked).
     * Resolves with the receipt {id (the notice's id), recalled_id, dateTime}. The
     * notice itself (send_type 3, info_type 7, recalled_id, recalled_by, msg
     * "你撤回了一条消息" / "对方撤回了一条消息") comes back through the long-poll to both
     * sides like any message, then onRecall(recalled_id, notice). Rejects with an
     * Error whose `message` is the server's reason and `reason` its code:
     * "not_yours" (the other side's message, or none with this id), "too_late"
     * (past the window) or "off" (recall turned off); code/msg/data as for send().
     */
    proto.recall = function (messageId, opts) {
      var o = opts || {};
      var form = { message_id: messageId };
      if (this.side === "customer") {
        form.u_id = this.peerId;
      } else {
        var customerId = o.customerId !== undefined && o.customerId !== null ? o.customerId : this.peerId;
        if (customerId === null) return Promise.reject(chatError(402, "customerId is required to recall from the inbox", 0, null));
        form.customer_id = customerId;
      }
      var retries = typeof o.retries === "number" && o.retries >= 0 ? o.retries : SEND_RETRIES;
      return this._postRetrying(PATHS[this.side].recall, form, retries).then(null, function (err) {
        var problems = err.data && err.data.message_id;
        var problem = Array.isArray(problems) && problems[0] ? problems[0] : null;
        if (problem) {
          err.reason = problem.code;
          if (typeof problem.message === "string" && problem.message) err.message = problem.message;
        }
        throw err;
      });
    };

    /**
     * Tell the other side this account is typing (call it on every input event):
     * at most one POST per conversation every 3 s, the rest return at once. The
     * other side's onTyping fires (its server answers at most once a second per
     * conversation). opts: {customerId} (radar side, default peerId). Resolves
     * with true when a POST was answered, false when throttled or failed: typing
     * is ephemeral, never retried and never reported to onError.
     */
    proto.typing = function (opts) {
      var o = opts || {};
      var form = {};
      var key;
      if (this.side === "customer") {
        form.u_id = this.peerId;
        key = String(this.peerId);
      } else {
        var customerId = o.customerId !== undefined && o.customerId !== null ? o.customerId : this.peerId;
        if (customerId === null) return Promise.resolve(false);
        form.customer_id = customerId;
        key = String(customerId);
      }
      var now = Date.now();
      var last = this._typedAt.get(key);
      if (last !== undefined && now - last < TYPING_INTERVAL_MS && now >= last) return Promise.resolve(false);
      this._typedAt.delete(key); // re-inserted last: the oldest are dropped first
      this._typedAt.set(key, now);
      if (this._typedAt.size > TYPING_REMEMBERED) this._typedAt.delete(this._typedAt.keys().next().value);
      return this._request("POST", PATHS[this.side].typing, null, form, TYPING_TIMEOUT_MS, null).then(
        function () { return true; },
        function () { return false; }
      );
    };

    /** A timer that stop() can cancel (rejecting with code "stopped"). */
    proto._sleep = function (ms, clientMsgId) {
      var self = this;
      return new Promise(function (resolve, reject) {
        var sleeper = {};
        var timer = setTimeout(function () {
          self._sleepers = self._sleepers.filter(function (s) { return s !== sleeper; });
          resolve();
        }, ms);
        sleeper.cancel = function () {
          clearTimeout(timer);
          var err = chatError("stopped", "已停止", 0);
          err.clientMsgId = clientMsgId;
          reject(err);
        };
        self._sleepers.push(sleeper);
      });
    };

    /**
     * Send a picture or a video: upload `file` (a File or Blob) with XMLHttpRequest,
     * then send it as a message ({info_type: 4, attachment_id} for an image, 5 for
     * a video) with send()'s client_msg_id machinery.
     * opts: {onProgress: function ({loaded, total})}  upload progress (bytes);
     *       {onUploaded: function (upload)}           the upload's data, before the send;
     *       {customerId} (radar side, default peerId), {clientMsgId}, {retries} as for send().
     * Resolves with {id, dateTime, upload} (upload: {attachment_id, kind, url,
     * thumbnail_url, content_type, size, width, height, duration}). Retry-safe:
     * calling it again with the same clientMsgId re-sends the upload already made
     * for that id (or uploads again if none finished), and the server stores the
     * message once. A refused upload rejects with code/msg/data as the server
     * answered (402: data.file[0].message says why; 413: too large) and is also
     * passed to onError; LeidaChat.uploadErrorText(err) gives the sentence to show.
     */
    proto.sendFile = function (file, opts) {
      var self = this;
      var o = opts || {};
      var clientMsgId = o.clientMsgId ? String(o.clientMsgId).slice(0, 64) : newClientMsgId();
      var params = {};
      var customerId = null;
      if (this.side === "customer") {
        params.u_id = this.peerId;
      } else {
        customerId = o.customerId !== undefined && o.customerId !== null ? o.customerId : this.peerId;
        if (customerId === null) {
          var missing = chatError(402, "customerId is required to send from the inbox", 0, null);
          missing.clientMsgId = clientMsgId;
          return Promise.reject(missing);
        }
        params.customer_id = customerId;
      }
      var known = this._uploads.get(clientMsgId);
      var uploaded = known ? Promise.resolve(known)
        : this._upload(PATHS[this.side].upload, params, file, o.onProgress).then(function (data) {
          if (!data || !data.attachment_id) {
            throw chatError("bad_response", "服务器响应无法解析", 200, data);
          }
          self._uploads.set(clientMsgId, data);
          if (self._uploads.size > UPLOADS_REMEMBERED) self._uploads.delete(self._uploads.keys().next().value);
          return data;
        }, function (err) {
          err.clientMsgId = clientMsgId;
          self._report(err);
          throw err;
        });
      return uploaded.then(function (data) {
        if (typeof o.onUploaded === "function") {
          try {
            o.onUploaded(data);
          } catch (e) {
            self._report(e);
          }
        }
        var content = { info_type: data.kind === "video" ? 5 : 4, attachment_id: data.attachment_id };
        return self.send(content, { customerId: customerId, clientMsgId: clientMsgId, retries: o.retries })
          .then(function (res) {
            self._uploads.delete(clientMsgId);
            return { id: res.id, dateTime: res.dateTime, upload: data };
          });
      });
    };

    /**
     * One signed multipart upload (a part named `file`) with XMLHttpRequest, for
     * its upload progress events. Resolves with the envelope's data; rejects like
     * _request. Fails when no byte moves for UPLOAD_IDLE_TIMEOUT_MS.
     */
    proto._upload = function (path, params, file, onProgress, isRetry) {
      var self = this;
      var XHR = this._XHR;
      if (!XHR) return Promise.reject(chatError("network", "XMLHttpRequest is not available", 0));
      if (typeof FormData !== "function") return Promise.reject(chatError("network", "FormData is not available", 0));
      var form = new FormData();
      if (file && typeof file.name === "string" && file.name) form.append("file", file, file.name);
      else form.append("file", file);
      var startedAt = Date.now();
      var url = this.signedUrl(path, params);

      return new Promise(function (resolve, reject) {
        var xhr = new XHR();
        var settled = false;
        var timer = null;
        function finish(fn, value) {
          if (settled) return;
          settled = true;
          if (timer) clearTimeout(timer);
          fn(value);
        }
        function idle() {
          if (timer) clearTimeout(timer);
          timer = setTimeout(function () {
            try {
              xhr.abort();
            } catch (e) { /* ignore */ }
            finish(reject, chatError("timeout", "请求超时", 0));
          }, UPLOAD_IDLE_TIMEOUT_MS);
        }
        function progress(loaded, total) {
          idle();
          if (typeof onProgress !== "function") return;
          try {
            onProgress({ loaded: loaded, total: total });
          } catch (e) {
            self._report(e);
          }
        }
        xhr.open("POST", url, true);
        if (xhr.upload) {
          xhr.upload.onprogress = function (ev) {
            progress(ev.loaded, ev.lengthComputable ? ev.total : (file && file.size) || 0);
          };
        }
        xhr.onprogress = idle; // the answer arriving
        xhr.onerror = function () { finish(reject, chatError("network", "网络错误", 0)); };
        xhr.onabort = function () { finish(reject, chatError("aborted", "请求已取消", 0)); };
        xhr.ontimeout = xhr.onerror;
        xhr.onload = function () {
          var headers = { get: function (name) { return xhr.getResponseHeader(name); } };
          var skewChanged = self._noteServerDate({ headers: headers }, startedAt);
          var body = null;
          try {
            body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
          } catch (e) {
            body = null;
          }
          var ok = xhr.status === 200;
          if (body && typeof body === "object" && typeof body.code === "number") {
            if (ok && body.code === 200) return finish(resolve, body.data);
            if (ok && body.code === 400 && skewChanged && !isRetry) { // signed with a clock minutes off: once more
              if (timer) clearTimeout(timer);
              settled = true;
              return self._upload(path, params, file, onProgress, true).then(resolve, reject);
            }
            var retryAfter = Number(headers.get("Retry-After"));
            var err = chatError(ok ? body.code : xhr.status, body.msg, xhr.status, body.data);
            if (retryAfter > 0) err.retryAfter = retryAfter;
            return finish(reject, err);
          }
          finish(reject, chatError(ok ? "bad_response" : xhr.status || "network",
            xhr.status === 413 ? "文件太大" : "服务器响应无法解析", xhr.status));
        };
        idle();
        progress(0, (file && file.size) || 0);
        try {
          xhr.send(form);
        } catch (e) {
          finish(reject, chatError("network", (e && e.message) || "网络错误", 0));
        }
      });
    };

    /* ---------------- helpers ---------------- */

    /**
     * One history page (page 1 = newest; each page oldest first). Resolves with
     * the envelope data: {ret_data, data_count[, mingpian_phone, wechat]}.
     * opts: {currentPage (default 1), length (default 20, max 100; 0 = up to the cap),
     *        customerId (radar side, default peerId)}.
     * Before start(), the polled conversation's history also seeds the cursor
     * (lastId) and the de-duplication set. A recalled message is a tombstone there
     * ({id, dateTime, send_type, recalled: true}, no content: LeidaChat.isRecalled),
     * followed later by its notice (LeidaChat.isRecallNotice): show the notice's
     * grey line, not the tombstone. onRecall is for the long-poll only.
     */
    proto.history = function (opts) {
      var self = this;
      var o = opts || {};
      var params = { current_page: o.currentPage || 1, length: o.length === undefined ? 20 : o.length };
      var polled = true;
      if (this.side === "customer") {
        params.u_id = this.peerId;
      } else {
        var customerId = o.customerId !== undefined && o.customerId !== null ? o.customerId : this.peerId;
        if (customerId === null) return Promise.reject(chatError(402, "customerId is required", 0, null));
        params.customer_id = customerId;
        polled = this.peerId !== null && String(customerId) === String(this.peerId);
      }
      return this._request("GET", PATHS[this.side].history, params, null, REQUEST_TIMEOUT_MS, null).then(function (data) {
        var items = data && Array.isArray(data.ret_data) ? data.ret_data : [];
        if (polled && !self.running) {
          self.lastId = maxId(items, self.lastId);
          items.forEach(function (item) { if (item && item.id !== undefined) self._remember(item.id); });
        }
        return data;
      });
    };

    /**
     * Unread messages from the other side. Customer: in this conversation.
     * Radar: opts.customerId (default peerId; null = all conversations).
     * Resolves with a number.
     */
    proto.unreadCount = function (opts) {
      var o = opts || {};
      var params = {};
      if (this.side === "customer") {
        params.u_id = this.peerId;
      } else {
        params.customer_id = o.customerId !== undefined ? o.customerId : this.peerId;
      }
      return this._request("GET", PATHS[this.side].unread, params, null, REQUEST_TIMEOUT_MS, null).then(function (data) {
        return Number(data && data.chatinfo_count) || 0;
      });
    };

    /**
     * Radar side only: the conversations, most recent first. Resolves with
     * {ret_data: [{customer_id, customer, customer_headimgurl, unread_count, last_msg}], data_count}.
     * opts: {currentPage (default 1), length (default 20, max 100)}.
     * Before start(), an inbox client (peerId null) seeds its cursor from the newest last_msg.
     */
    proto.contacts = function (opts) {
      var self = this;
      if (this.side !== "radar") return Promise.reject(chatError(402, "contacts() is radar-side only", 0, null));
      var o = opts || {};
      var params = { current_page: o.currentPage || 1, length: o.length === undefined ? 20 : o.length };
      return this._request("GET", PATHS.radar.contacts, params, null, REQUEST_TIMEOUT_MS, null).then(function (data) {
        var rows = data && Array.isArray(data.ret_data) ? data.ret_data : [];
        if (self.peerId === null && !self.running) {
          self.lastId = maxId(rows.map(function (r) { return r && r.last_msg; }), self.lastId);
        }
        return data;
      });
    };

    return LeidaChat;
  }
);
