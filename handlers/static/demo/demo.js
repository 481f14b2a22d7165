/*
 * demo.js: what both demo pages share: safe DOM building (text only, never
 * innerHTML), link filtering, avatars, times, and one bubble per info_type.
 * Loaded after leida-chat.js; defines the global LeidaDemo.
 */
(function (root) {
  "use strict";

  var PAGE = 20;
  var TIP = 3; // send_type of a tip: the server's own words in a conversation, shown to both sides
  var RECALL_WINDOW_MS = 120 * 1000; // 撤回 is offered this long after a send (the server's chat.recall_seconds decides)
  var TYPING_SHOWN_MS = 5000; // "对方正在输入…" stays this long after the other side's last typing

  /** A tip is nobody's message: neither side's bubble, never unread. */
  function isTip(item) {
    return !!item && Number(item.send_type) === TIP;
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text); // never innerHTML
    return node;
  }

  /** http(s), protocol-relative or relative links only: no javascript:, data: … */
  function safeUrl(url) {
    if (typeof url !== "string") return "";
    var u = url.trim();
    if (!u) return "";
    if (/^[a-z][a-z0-9+.\-]*:/i.test(u) && !/^https?:/i.test(u)) return "";
    return u;
  }

  function firstChar(name) {
    var chars = Array.from(String(name || "").trim());
    return chars.length ? chars[0].toUpperCase() : "?";
  }

  function colorFor(name) {
    var h = 2166136261, s = String(name || ""); // FNV-1a: close names get distinct colours
    for (var i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619) >>> 0;
    return "hsl(" + (h % 360) + ", 45%, 60%)";
  }

  /** An avatar: the picture when it loads, else the name's first character (drawn by CSS). */
  function avatar(url, name, extraClass) {
    var node = el("span", "avatar" + (extraClass ? " " + extraClass : ""));
    setAvatar(node, url, name);
    return node;
  }

  function setAvatar(node, url, name) {
    node.setAttribute("data-initial", firstChar(name));
    node.style.background = colorFor(name);
    var old = node.querySelector("img");
    if (old) node.removeChild(old);
    var src = safeUrl(url);
    if (src) {
      var img = el("img");
      img.alt = "";
      img.referrerPolicy = "no-referrer";
      img.onerror = function () { if (img.parentNode) img.parentNode.removeChild(img); };
      img.src = src;
      node.appendChild(img);
    }
  }

  /** "2018-09-21T15:18:01.548" (server local time, no zone) -> Date */
  function parseTime(s) {
    var m = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?/.exec(String(s || ""));
    if (!m) return null;
    return new Date(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0), +String(m[7] || "0").slice(0, 3));
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  /** WeChat-style: 15:18 · 昨天 15:18 · 星期三 15:18 · 9月21日 15:18 · 2018年9月21日 15:18 */
  function formatTime(d, short) {
    if (!d) return "";
    var now = new Date();
    var hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    var day = new Date(d.getFullYear(), d.getMonth(), d.getDate());
    var today = new Date(now.getFullYear(), now.getMonth(), now.getDate());
    var days = Math.round((today - day) / 86400000);
    if (days <= 0) return hm;
    if (days === 1) return short ? "昨天" : "昨天 " + hm;
    if (days < 7) return "星期" + "日一二三四五六".charAt(d.getDay()) + (short ? "" : " " + hm);
    if (d.getFullYear() === now.getFullYear()) return (d.getMonth() + 1) + "月" + d.getDate() + "日" + (short ? "" : " " + hm);
    return d.getFullYear() + "年" + (d.getMonth() + 1) + "月" + d.getDate() + "日" + (short ? "" : " " + hm);
  }

  function formatPrice(p) {
    if (p === undefined || p === null || p === "") return "";
    var s = String(p).trim();
    return /^[¥￥$]/.test(s) ? s : "¥" + s;
  }

  /** The full picture over the page; a tap (or Esc) closes it. */
  function openViewer(src) {
    var v = el("div", "viewer");
    v.setAttribute("data-testid", "viewer");
    v.setAttribute("role", "dialog");
    v.setAttribute("aria-label", "查看图片");
    var img = el("img");
    img.alt = "图片";
    img.src = src;
    img.onerror = function () { if (img.parentNode) v.replaceChild(el("div", "broken", "图片加载失败"), img); };
    v.appendChild(img);
    function close() {
      document.removeEventListener("keydown", onKey);
      if (v.parentNode) v.parentNode.removeChild(v);
    }
    function onKey(ev) { if (ev.key === "Escape") close(); }
    v.onclick = close;
    document.addEventListener("keydown", onKey);
    document.body.appendChild(v);
  }

  var MEDIA_MAX_W = 200, MEDIA_MAX_H = 260, MEDIA_MIN = 60;

  /** The box of a picture/video bubble from its width/height: at most 200×260, aspect ratio kept. */
  function mediaBox(width, height) {
    var w = Number(width), h = Number(height);
    if (!(w > 0 && h > 0)) return null;
    var scale = Math.min(1, MEDIA_MAX_W / w, MEDIA_MAX_H / h);
    // a very long strip is cropped (object-fit: cover) rather than drawn a few pixels thin
    return { width: Math.max(MEDIA_MIN, Math.round(w * scale)), height: Math.max(MEDIA_MIN, Math.round(h * scale)) };
  }

  function sizeMedia(node, item) {
    var box = mediaBox(item.width, item.height);
    if (!box) return;
    node.style.width = box.width + "px";
    node.style.height = box.height + "px";
    node.classList.add("sized");
  }

  /** Local previews (blob: URLs) of the pictures this page is sending, by draft item: never from message data. */
  var localPreviews = new WeakMap();

  function cardShell(kind, iconText, title, sub, foot, href) {
    var bubble = el("div", "bubble card " + kind);
    var main = el("div", "card-main");
    main.appendChild(iconText);
    var text = el("div", "card-text");
    text.appendChild(el("div", "card-title", title));
    if (sub) text.appendChild(sub);
    main.appendChild(text);
    var link = safeUrl(href);
    var holder = bubble;
    if (link) {
      holder = el("a");
      holder.href = link;
      holder.target = "_blank";
      holder.rel = "noopener noreferrer";
      bubble.appendChild(holder);
    }
    holder.appendChild(main);
    if (foot) holder.appendChild(el("div", "card-foot", foot));
    return bubble;
  }

  /** The bubble of one message, by info_type (1 text, 2 product, 3 contact request, 4 image, 5 video, 6 shop). */
  function renderBubble(item, onMediaLoad, mine) {
    var type = Number(item.info_type);
    var bubble, src;
    if (type === 2) {
      var cover = safeUrl(item.product_cover_url);
      var icon;
      if (cover) {
        icon = el("img", "cover");
        icon.alt = "";
        icon.src = cover;
        icon.onerror = function () {
          if (icon.parentNode) icon.parentNode.replaceChild(el("div", "cover placeholder", "🛍"), icon);
        };
        icon.onload = onMediaLoad;
      } else {
        icon = el("div", "cover placeholder", "🛍");
      }
      var price = formatPrice(item.product_price);
      bubble = cardShell("product", icon, item.product_name || "商品", price ? el("div", "price", price) : null, "商品咨询", item.url);
    } else if (type === 3) {
      bubble = cardShell("contact-req", el("div", "icon", "📱"),
        (typeof item.msg === "string" && item.msg.trim()) ? item.msg : (mine ? "我想获取您的联系方式" : "对方想获取您的联系方式"),
        el("div", "card-sub", "电话 / 微信"), null, null);
    } else if (type === 4 && (src = localPreviews.get(item) || safeUrl(item.thumbnail_url) || safeUrl(item.url))) {
      // the thumbnail in the bubble, its box reserved from width/height so the list does not jump;
      // a tap opens the full picture (url). Old messages carry only url: shown as they load.
      bubble = el("div", "bubble media");
      var full = localPreviews.get(item) || safeUrl(item.url) || src;
      var img = el("img");
      img.alt = "图片";
      img.setAttribute("data-testid", "picture");
      sizeMedia(img, item);
      img.src = src;
      img.onload = onMediaLoad;
      img.onerror = function () {
        if (img.parentNode === bubble) bubble.replaceChild(el("div", "broken", "图片加载失败"), img);
      };
      img.onclick = function () { openViewer(full); };
      bubble.appendChild(img);
    } else if (type === 5 && (src = localPreviews.get(item) || safeUrl(item.url))) {
      bubble = el("div", "bubble media");
      var video = el("video");
      video.setAttribute("data-testid", "video");
      video.controls = true;
      video.preload = "metadata";
      video.setAttribute("playsinline", "");
      video.setAttribute("webkit-playsinline", "");
      var poster = safeUrl(item.thumbnail_url);
      if (poster) video.poster = poster;
      sizeMedia(video, item);
      video.src = src;
      video.onloadedmetadata = onMediaLoad;
      bubble.appendChild(video);
    } else if (type === 6) {
      bubble = cardShell("shop", el("div", "icon", "🏪"), "店铺链接",
        el("div", "card-sub", (typeof item.msg === "string" && item.msg.trim()) ? item.msg : "点击进入店铺"),
        "进入店铺 ›", item.url);
    } else {
      var text = typeof item.msg === "string" ? item.msg : (type === 4 ? "[图片]" : type === 5 ? "[视频]" : "[暂不支持的消息类型]");
      bubble = el("div", "bubble text", text); // textContent: HTML in messages is shown, never run
    }
    var when = parseTime(item.dateTime);
    if (when) bubble.title = formatTime(when);
    return bubble;
  }

  /** What a pending send and its message coming back through the poll have in common (null: nothing yet). */
  function contentKey(c) {
    if (typeof c.attachment_id === "string" && c.attachment_id) return JSON.stringify(["attachment", c.attachment_id]);
    if (c.attachment_id === null && "attachment_id" in c) return null; // an upload still under way
    return JSON.stringify([Number(c.info_type), c.msg || "", c.url || "", c.product_name || ""]);
  }


  /* ---- the state bar, a toast, and a message list kept in id order ---- */

  function showState(stateEl, state, delayMs) {
    stateEl.setAttribute("data-state", state);
    stateEl.textContent = "";
    if (state === "connecting" || state === "retrying") stateEl.appendChild(el("span", "spin"));
    var text = {
      connecting: "连接中…",
      live: "已连接",
      retrying: "网络不给力，重新连接中…" + (delayMs ? "（" + Math.max(1, Math.round(delayMs / 1000)) + " 秒后）" : ""),
      stopped: "已断开连接",
      error: "加载失败，请刷新页面重试"
    }[state] || state;
    stateEl.appendChild(document.createTextNode(text));
  }

  var toastTimer = null;
  function toast(text) {
    var t = document.getElementById("toast");
    if (!t) {
      t = el("div");
      t.id = "toast";
      t.style.cssText = "position:fixed;left:50%;top:40%;transform:translateX(-50%);background:rgba(0,0,0,.75);color:#fff;" +
        "padding:10px 16px;border-radius:8px;font-size:14px;z-index:60;max-width:80%;text-align:center";
      document.body.appendChild(t);
    }
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { t.hidden = true; }, 2200);
  }

  /** A list block for an item: its time divider (shown by the list), its time and id; the caller adds the rest. */
  function blockShell(item) {
    var block = el("div", "msg-block");
    var divider = el("div", "time-divider");
    divider.appendChild(el("span"));
    divider.hidden = true;
    block.appendChild(divider);
    var when = parseTime(item.dateTime);
    block.setAttribute("data-time", String(when ? when.getTime() : Date.now()));
    if (item.id !== undefined && item.id !== null) block.setAttribute("data-block-id", String(item.id));
    return block;
  }

  /** One message as a list block: a time divider (shown by the list) and the row. */
  function messageBlock(item, mine, avatarNode, onMediaLoad) {
    var block = blockShell(item);
    var row = el("div", "msg-row" + (mine ? " mine" : ""));
    row.setAttribute("data-testid", "message");
    row.setAttribute("data-id", item.id !== undefined && item.id !== null ? String(item.id) : "");
    row.setAttribute("data-send-type", String(item.send_type));
    row.appendChild(avatarNode);
    var body = el("div", "msg-body");
    body.appendChild(renderBubble(item, onMediaLoad, mine));
    body.appendChild(el("div", "msg-status"));
    row.appendChild(body);
    block.appendChild(row);
    return block;
  }

  /** A tip (send_type 3) as a list block: a grey line in the middle, as WeChat's system lines; no avatar, no bubble. */
  function tipBlock(item) {
    var block = blockShell(item);
    var line = el("div", "tip");
    line.setAttribute("data-testid", "tip");
    line.setAttribute("data-id", item.id !== undefined && item.id !== null ? String(item.id) : "");
    line.setAttribute("data-send-type", String(item.send_type));
    line.appendChild(el("span", null, item.msg || ""));
    block.appendChild(line);
    return block;
  }

  function setBlockId(block, id, dateTime) {
    block.setAttribute("data-block-id", String(id));
    block.querySelector("[data-testid=message]").setAttribute("data-id", String(id));
    var when = parseTime(dateTime);
    if (when) block.setAttribute("data-time", String(when.getTime()));
  }

  /** The message list of a page: blocks placed by id, time dividers, sticking to the bottom. */
  function messageList(listEl, emptyEl) {
    var list = { stick: true };

    function nearBottom() {
      return listEl.scrollHeight - listEl.scrollTop - listEl.clientHeight < 80;
    }
    function scrollToBottom() { listEl.scrollTop = listEl.scrollHeight; }
    function onMediaLoad() { if (list.stick) scrollToBottom(); }

    function blockId(block) {
      var v = block.getAttribute("data-block-id");
      return v ? Number(v) : Infinity; // pending blocks sort last
    }

    /** Show a time divider above a block when it starts a new 5-minute stretch. */
    function refreshDivider(block) {
      if (!block) return;
      var divider = block.querySelector(".time-divider");
      var prev = block.previousElementSibling;
      while (prev && !prev.classList.contains("msg-block")) prev = prev.previousElementSibling;
      var t = Number(block.getAttribute("data-time")) || 0;
      var pt = prev ? Number(prev.getAttribute("data-time")) || 0 : 0;
      var show = !prev || (t && pt && t - pt > 5 * 60 * 1000);
      if (show && t) {
        divider.firstChild.textContent = formatTime(new Date(t));
        divider.hidden = false;
      } else {
        divider.hidden = true;
      }
    }

    function nextBlock(block) {
      var n = block.nextElementSibling;
      while (n && !n.classList.contains("msg-block")) n = n.nextElementSibling;
      return n;
    }

    /** Put a block where its id belongs (oldest first, pending ones at the end). */
    function place(block) {
      var id = blockId(block);
      var before = null;
      var all = listEl.querySelectorAll(".msg-block");
      for (var i = 0; i < all.length; i++) {
        if (all[i] !== block && blockId(all[i]) > id) { before = all[i]; break; }
      }
      listEl.insertBefore(block, before);
      refreshDivider(block);
      refreshDivider(nextBlock(block));
      emptyEl.hidden = true;
    }
    /** Blocks by message id, and the sends still waiting for theirs. */
    list.blocks = new Map();
    list.pendings = []; // {content, clientMsgId, block, id, failed}
    list.recalled = new Set(); // ids taken back: never shown again, whatever an older answer says

    /**
     * A message was recalled (its notice came, a history tombstone said so, or
     * our own recall was answered): its bubble goes, and never comes back. The
     * notice's grey line is the caller's (it is an item like any other).
     */
    function recall(id) {
      var key = String(id);
      list.recalled.add(key);
      var block = list.blocks.get(key);
      list.blocks.delete(key);
      if (!block || !block.parentNode) return;
      var next = nextBlock(block);
      block.parentNode.removeChild(block);
      refreshDivider(next);
    }

    function setBlockIdOf(block, id, dateTime) {
      setBlockId(block, id, dateTime);
      list.blocks.set(String(id), block);
    }

    /** Empty the list for another conversation. */
    function clear() {
      list.blocks = new Map();
      list.pendings = [];
      list.recalled = new Set();
      list.stick = true;
      Array.prototype.slice.call(listEl.querySelectorAll(".msg-block")).forEach(function (b) { listEl.removeChild(b); });
    }

    /**
     * Render messages (history or long-poll), each id once. One of our own sends
     * coming back through the poll before send() resolved takes over its pending
     * block. A recalled message's tombstone (recalled: true, no content) is never
     * a bubble: it takes away the bubble of that id if one is shown. hooks: mine(item), build(item) -> block, and optionally seen(item)
     * for each new item, known(block, item, mine) for an id already shown,
     * ownMatched(pending, item) when a pending block gets its id.
     */
    function addItems(items, where, hooks) {
      var wasNear = nearBottom();
      var oldHeight = listEl.scrollHeight;
      var ownArrived = false;
      items.forEach(function (item) {
        if (!item || item.id === undefined) return;
        var key = String(item.id);
        if (LeidaChat.isRecalled(item)) {
          recall(key);
          return;
        }
        if (list.recalled.has(key)) return; // an answer older than the recall
        var mine = hooks.mine(item);
        if (list.blocks.has(key)) {
          if (hooks.known) hooks.known(list.blocks.get(key), item, mine);
          return;
        }
        if (hooks.seen) hooks.seen(item);
        if (mine) {
          ownArrived = true;
          for (var i = 0; i < list.pendings.length; i++) {
            var p = list.pendings[i];
            var pendingKey = contentKey(p.content);
            if (p.id === null && pendingKey !== null && pendingKey === contentKey(item)) {
              p.id = key;
              setBlockIdOf(p.block, key, item.dateTime);
              if (hooks.ownMatched) hooks.ownMatched(p, item);
              place(p.block);
              if (p.failed) list.pendings.splice(i, 1); // it was stored after all (the answer got lost)
              return;
            }
          }
        }
        var block = hooks.build(item);
        list.blocks.set(key, block);
        place(block);
      });
      if (where === "older") {
        listEl.scrollTop += listEl.scrollHeight - oldHeight; // keep what the reader was looking at
      } else if (wasNear || list.stick || ownArrived) {
        scrollToBottom();
        list.stick = true;
      }
    }

    /**
     * Show a send at once as a pending block, then send it, with the same
     * client_msg_id on every retry so that the server stores it once.
     * hooks: mineType (its send_type), build(item) -> block, send(pending) ->
     * promise of {id, dateTime}, and optionally stillShown() (false: another
     * conversation is open, drop the answer) and stored(pending) once it has its id.
     */
    function sendPending(content, hooks) {
      var p = { content: content, clientMsgId: LeidaChat.newClientMsgId(), id: null, failed: false, block: null };
      var draft = { id: null, send_type: hooks.mineType, dateTime: null };
      Object.keys(content).forEach(function (k) { draft[k] = content[k]; });
      if (hooks.draft) hooks.draft(draft); // e.g. a local preview of a picture being uploaded
      p.block = hooks.build(draft);
      list.pendings.push(p);
      place(p.block);
      scrollToBottom();
      list.stick = true;
      attempt(p, hooks);
    }

    function attempt(p, hooks) {
      var status = p.block.querySelector(".msg-status");
      status.textContent = "";
      var spin = el("span", "spin");
      status.appendChild(spin);
      var oldError = p.block.querySelector("[data-testid=send-error]");
      if (oldError) p.block.removeChild(oldError);
      p.failed = false;
      hooks.send(p).then(function (res) {
        if (spin.parentNode) status.removeChild(spin);
        if (hooks.done) hooks.done(p);
        var i = list.pendings.indexOf(p);
        if (i >= 0) list.pendings.splice(i, 1);
        if (hooks.stillShown && !hooks.stillShown()) return;
        var key = String(res.id);
        if (p.id === key) return; // the poll brought it back first
        if (list.blocks.has(key) && list.blocks.get(key) !== p.block) {
          if (p.block.parentNode) p.block.parentNode.removeChild(p.block); // already shown (another tab)
          return;
        }
        setBlockIdOf(p.block, key, res.dateTime);
        if (hooks.stored) hooks.stored(p);
        place(p.block);
      }, function (err) {
        p.failed = true;
        status.textContent = "";
        var retry = el("button", "failed", "!");
        retry.type = "button";
        retry.title = "发送失败，点击重发";
        retry.onclick = function () { attempt(p, hooks); };
        status.appendChild(retry);
        if (hooks.done) hooks.done(p);
        var why = hooks.errorText ? hooks.errorText(err) : "";
        if (why) { // the server's own words, under the bubble (textContent)
          var line = el("div", "send-error", why);
          line.setAttribute("data-testid", "send-error");
          p.block.appendChild(line);
          toast(why);
          return;
        }
        toast(err.code === 402 ? "消息内容不符合要求" : err.code === 400 ? "身份验证失败，请刷新页面" : "发送失败，点击红色感叹号重发");
      });
    }

    /**
     * Send a picture or video chosen in a file input: shown at once as a pending
     * bubble (a local preview of its real size, with the upload's progress over
     * it), then uploaded and sent by hooks.sendFile(p, file, opts) -> promise
     * (opts carries onProgress and onUploaded for LeidaChat.sendFile). A refused
     * file shows the server's reason under the bubble. Other hooks as for sendPending.
     */
    function sendFilePending(file, hooks) {
      var video = /^video\//i.test(file.type || "");
      var preview = null;
      try {
        preview = URL.createObjectURL(file);
      } catch (e) { preview = null; }
      measure(preview, video).then(function (size) {
        if (hooks.stillShown && !hooks.stillShown()) { // another conversation was opened meanwhile: send it unseen
          hooks.sendFile({ clientMsgId: LeidaChat.newClientMsgId() }, file, {}).then(null, function (err) {
            toast(LeidaChat.uploadErrorText(err));
          });
          return;
        }
        var content = { info_type: video ? 5 : 4, attachment_id: null };
        var progress = null;
        sendPending(content, {
          mineType: hooks.mineType,
          build: hooks.build,
          stillShown: hooks.stillShown,
          stored: hooks.stored,
          draft: function (draft) {
            if (size) {
              draft.width = size.width;
              draft.height = size.height;
              localPreviews.set(draft, preview);
            }
          },
          send: function (p) {
            var bubble = p.block.querySelector(".bubble");
            if (progress && progress.parentNode) progress.parentNode.removeChild(progress);
            progress = el("div", "upload-progress");
            progress.setAttribute("data-testid", "progress");
            var bar = el("span", "bar");
            var pct = el("span", "pct", "0%");
            progress.appendChild(bar);
            progress.appendChild(pct);
            bubble.appendChild(progress);
            return hooks.sendFile(p, file, {
              onProgress: function (ev) {
                var f = ev.total > 0 ? Math.min(1, ev.loaded / ev.total) : 0;
                pct.textContent = Math.floor(f * 100) + "%";
                bar.style.width = (f * 100).toFixed(1) + "%";
              },
              onUploaded: function (upload) {
                p.content = { info_type: upload.kind === "video" ? 5 : 4, attachment_id: upload.attachment_id };
                pct.textContent = "100%";
                bar.style.width = "100%";
              },
            });
          },
          done: function () {
            if (progress && progress.parentNode) progress.parentNode.removeChild(progress);
            progress = null;
          },
          errorText: function (err) { return LeidaChat.uploadErrorText(err); },
        });
      });
    }

    /** The natural size of a local picture/video, or null (not one the browser can show). */
    function measure(url, video) {
      return new Promise(function (resolve) {
        if (!url) return resolve(null);
        var node = video ? el("video") : el("img");
        var timer = setTimeout(function () { resolve(null); }, 3000);
        function done(size) { clearTimeout(timer); resolve(size); }
        node.onerror = function () { done(null); };
        if (video) {
          node.preload = "metadata";
          node.muted = true;
          node.onloadedmetadata = function () {
            done(node.videoWidth > 0 ? { width: node.videoWidth, height: node.videoHeight } : null);
          };
        } else {
          node.onload = function () {
            done(node.naturalWidth > 0 ? { width: node.naturalWidth, height: node.naturalHeight } : null);
          };
        }
        node.src = url;
      });
    }

    listEl.addEventListener("scroll", function () { list.stick = nearBottom(); });
    list.sendPending = sendPending;
    list.sendFilePending = sendFilePending;
    list.setBlockId = setBlockIdOf;
    list.clear = clear;
    list.addItems = addItems;
    list.nearBottom = nearBottom;
    list.scrollToBottom = scrollToBottom;
    list.onMediaLoad = onMediaLoad;
    list.place = place;
    list.recall = recall;
    return list;
  }

  /**
   * The picture button of a composer: it opens the (hidden) file input; each
   * chosen file goes to onFile(file). enabled() says whether sending is possible now.
   */
  function filePicker(button, fileInput, enabled, onFile) {
    button.addEventListener("click", function () {
      if (enabled()) fileInput.click();
    });
    fileInput.addEventListener("change", function () {
      var files = Array.prototype.slice.call(fileInput.files || []);
      fileInput.value = ""; // the same file may be chosen again
      if (!enabled()) return;
      files.forEach(onFile);
    });
  }

  /* ---- 撤回: a menu on one's own bubbles (right-click, or a long press on a phone) ---- */

  /** The sentence to show when a recall is refused, by the server's reason code. */
  function recallErrorText(err) {
    var reason = err && err.reason;
    if (reason === "too_late") return "发送时间超过2分钟的消息，不能被撤回";
    if (reason === "not_yours") return "只能撤回自己发送的消息";
    if (reason === "off") return "撤回功能未开启";
    return err && (err.code === "network" || err.code === "timeout") ? "网络不给力，撤回失败" : "撤回失败";
  }

  var menuEl = null;

  function closeMenu() {
    if (menuEl && menuEl.parentNode) menuEl.parentNode.removeChild(menuEl);
    menuEl = null;
  }

  /** The recallable message under a DOM node: own, stored (has an id), sent within the window. */
  function recallableAt(node) {
    var bubble = node && node.closest ? node.closest(".bubble") : null;
    var row = bubble ? bubble.closest(".msg-row.mine") : null;
    var id = row ? row.getAttribute("data-id") : "";
    if (!id) return null; // the other side's, or a send still pending
    var block = row.closest(".msg-block");
    var sentAt = Number(block && block.getAttribute("data-time"));
    if (sentAt && Date.now() - sentAt > RECALL_WINDOW_MS) return null;
    return { id: id, bubble: bubble };
  }

  function openMenu(target, onRecall) {
    closeMenu();
    var menu = menuEl = el("div", "msg-menu");
    menu.setAttribute("data-testid", "msg-menu");
    menu.setAttribute("role", "menu");
    var item = el("button", null, "撤回");
    item.type = "button";
    item.setAttribute("role", "menuitem");
    item.setAttribute("data-testid", "recall");
    item.onclick = function () {
      closeMenu();
      onRecall(target.id);
    };
    menu.appendChild(item);
    document.body.appendChild(menu);
    // above the bubble, as WeChat's, or below it when there is no room
    var box = target.bubble.getBoundingClientRect();
    var left = Math.min(Math.max(8, box.left + box.width / 2 - menu.offsetWidth / 2), window.innerWidth - menu.offsetWidth - 8);
    var below = box.top - menu.offsetHeight - 8 < 8;
    menu.classList.toggle("below", below);
    menu.style.left = Math.round(left) + "px";
    menu.style.top = Math.round(below ? box.bottom + 8 : box.top - menu.offsetHeight - 8) + "px";
    item.focus();
  }

  /**
   * 撤回 on one's own messages in listEl: a right-click or a long press on a bubble
   * sent less than 2 minutes ago opens a small menu; its 撤回 calls
   * recall(messageId) -> promise. A refusal is shown as a toast (the page
   * removes the bubble when the recall's notice or receipt comes).
   */
  function recallMenu(listEl, recall) {
    function onRecall(id) {
      recall(id).then(null, function (err) { toast(recallErrorText(err)); });
    }
    listEl.addEventListener("contextmenu", function (ev) {
      var target = recallableAt(ev.target);
      if (!target) return; // the browser's own menu
      ev.preventDefault();
      openMenu(target, onRecall);
    });
    var pressTimer = null;
    function cancelPress() {
      clearTimeout(pressTimer);
      pressTimer = null;
    }
    listEl.addEventListener("touchstart", function (ev) {
      cancelPress();
      var target = ev.touches.length === 1 ? recallableAt(ev.target) : null;
      if (target) pressTimer = setTimeout(function () { openMenu(target, onRecall); }, 500);
    }, { passive: true });
    ["touchend", "touchmove", "touchcancel"].forEach(function (name) {
      listEl.addEventListener(name, cancelPress, { passive: true });
    });
    listEl.addEventListener("scroll", closeMenu);
    document.addEventListener("pointerdown", function (ev) {
      if (menuEl && !menuEl.contains(ev.target)) closeMenu();
    }, true);
    document.addEventListener("keydown", function (ev) { if (ev.key === "Escape") closeMenu(); });
    window.addEventListener("resize", closeMenu);
  }

  /* ---- "对方正在输入…" ---- */

  /**
   * "Shown" for 5 s after each show(), hide() at once (their message came):
   * node (optional) is unhidden meanwhile, and onChange(shown) hears each change.
   */
  function typingIndicator(node, onChange) {
    var timer = null;
    var now = false;
    function set(shown) {
      if (now === shown) return;
      now = shown;
      if (node) node.hidden = !shown;
      if (onChange) onChange(shown);
    }
    return {
      show: function () {
        clearTimeout(timer);
        timer = setTimeout(function () { set(false); }, TYPING_SHOWN_MS);
        set(true);
      },
      hide: function () {
        clearTimeout(timer);
        set(false);
      },
    };
  }

  root.LeidaDemo = {
    PAGE: PAGE,
    TIP: TIP,
    TYPING_SHOWN_MS: TYPING_SHOWN_MS,
    isTip: isTip,
    el: el,
    safeUrl: safeUrl,
    firstChar: firstChar,
    colorFor: colorFor,
    avatar: avatar,
    setAvatar: setAvatar,
    parseTime: parseTime,
    pad: pad,
    formatTime: formatTime,
    formatPrice: formatPrice,
    openViewer: openViewer,
    mediaBox: mediaBox,
    filePicker: filePicker,
    cardShell: cardShell,
    renderBubble: renderBubble,
    contentKey: contentKey,
    showState: showState,
    toast: toast,
    setBlockId: setBlockId,
    messageBlock: messageBlock,
    tipBlock: tipBlock,
    messageList: messageList,
    recallMenu: recallMenu,
    recallErrorText: recallErrorText,
    typingIndicator: typingIndicator,
  };
})(window);
