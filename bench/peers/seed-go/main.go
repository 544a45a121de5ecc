// seed-go: the seed's Go prototype, written from its description (seed §1-§3), so that
// scripts/bench can measure imgate against the design it replaces. It is deliberately the
// seed's design and nothing more:
//
//   - gorilla/websocket; a user connects at /?userId=U (or /?userid=U, or
//     /im_component/wx_official_account/msg?userid=U), offering the sub-protocol "echo";
//   - one mutex over two maps: the live connections per user, and the seed's "message
//     cache" (a map of frames per user who is not connected), flushed when the user
//     connects; memory only, so nothing survives a restart and `since` is ignored;
//   - POST /send (and the seed's .../send, .../send_xml) with the seed's JSON (§2.1) or a
//     WeChat XML message (§2.2, §3) pushes a frame to the recipient (JSON: data.contact_id;
//     XML: ToUserName); the frame's contact_id is the other party (the sender);
//   - a heartbeat frame (code 101) every 25 s on each connection.
//
// A slow client whose queue of 256 frames is full is dropped, as in gorilla's chat example
// the prototype follows. Build without modules, against Debian's packages
// (golang-go, golang-github-gorilla-websocket-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o seed-go .
//	./seed-go -listen 127.0.0.1:1234
package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"flag"
	"io"
	"log"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

const prefix = "/im_component/wx_official_account"

// result is the seed's "result" object; data is a message's "data" object (seed §1.2).
type result struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

type data struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Avatar    string            `json:"avatar"`
	MsgType   string            `json:"msg_type"`
	ContactID string            `json:"contact_id"`
	CompanyID string            `json:"company_id"`
	SendTime  int64             `json:"send_time"`
	Msg       map[string]string `json:"msg"`
}

type frame struct {
	Data   interface{} `json:"data"`
	Result result      `json:"result"`
}

// wechatXML is a WeChat message as the seed's test posts it; unknown elements are ignored.
type wechatXML struct {
	ToUserName   string
	FromUserName string
	CreateTime   string
	MsgType      string
	Content      string
	MediaId      string
	MsgId        string
}

// codes: the seed's result codes per msg_type; anything else is sent as text's.
var codes = map[string]int{"text": 1001, "image": 1002, "voice": 1003, "video": 1004}

func mustJSON(v interface{}) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

var (
	heartbeat = mustJSON(frame{Data: struct{}{}, Result: result{101, "heartbeat"}})
	ok        = mustJSON(frame{Data: struct{}{}, Result: result{0, "ok"}})
)

type conn struct {
	ws  *websocket.Conn
	out chan []byte
}

// hub holds the seed's two maps under one lock.
type hub struct {
	mu    sync.Mutex
	live  map[string]map[*conn]struct{}
	cache map[string][][]byte
}

func newHub() *hub {
	return &hub{live: map[string]map[*conn]struct{}{}, cache: map[string][][]byte{}}
}

// join registers c for user and hands back the frames cached while the user was away.
func (h *hub) join(user string, c *conn) [][]byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.live[user] == nil {
		h.live[user] = map[*conn]struct{}{}
	}
	h.live[user][c] = struct{}{}
	pending := h.cache[user]
	delete(h.cache, user)
	return pending
}

func (h *hub) leave(user string, c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if set, found := h.live[user]; found {
		if _, mine := set[c]; mine {
			delete(set, c)
			close(c.out)
		}
		if len(set) == 0 {
			delete(h.live, user)
		}
	}
}

// push queues b to every live connection of user, or caches it when there is none.
func (h *hub) push(user string, b []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.live[user]
	if len(set) == 0 {
		h.cache[user] = append(h.cache[user], b)
		return
	}
	for c := range set {
		select {
		case c.out <- b:
		default: // its queue is full: a slow client, dropped
			delete(set, c)
			close(c.out)
		}
	}
}

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	Subprotocols:    []string{"echo"},
	CheckOrigin:     func(*http.Request) bool { return true },
}

func fail(w http.ResponseWriter, status int, reason string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(mustJSON(frame{Data: struct{}{}, Result: result{-1, reason}}))
}

func (h *hub) serveWS(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	user := q.Get("userid")
	if user == "" {
		user = q.Get("userId")
	}
	if user == "" {
		fail(w, http.StatusBadRequest, "missing userid")
		return
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	c := &conn{ws: ws, out: make(chan []byte, 256)}
	pending := h.join(user, c)
	go writer(c, pending)
	// The reader: frames from the client (the seed's page sends "pong") are ignored.
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			break
		}
	}
	h.leave(user, c)
}

// writer owns the socket's writes: first the cached frames, then live ones and heartbeats.
func writer(c *conn, pending [][]byte) {
	defer c.ws.Close()
	for _, b := range pending {
		if c.ws.WriteMessage(websocket.TextMessage, b) != nil {
			return
		}
	}
	tick := time.NewTicker(25 * time.Second)
	defer tick.Stop()
	for {
		select {
		case b, open := <-c.out:
			if !open {
				return
			}
			if c.ws.WriteMessage(websocket.TextMessage, b) != nil {
				return
			}
		case <-tick.C:
			if c.ws.WriteMessage(websocket.TextMessage, heartbeat) != nil {
				return
			}
		}
	}
}

// sendTime reads CreateTime: unix seconds, or the seed's "2006-01-02 15:04:05" (Beijing time).
func sendTime(s string) int64 {
	if t, err := strconv.ParseInt(s, 10, 64); err == nil {
		return t
	}
	if t, err := time.ParseInLocation("2006-01-02 15:04:05", s, time.FixedZone("CST", 8*3600)); err == nil {
		return t.Unix()
	}
	return time.Now().Unix()
}

func (h *hub) send(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		fail(w, http.StatusMethodNotAllowed, "POST only")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		fail(w, http.StatusBadRequest, "cannot read the body")
		return
	}
	var to string
	var d data
	if t := bytes.TrimSpace(body); len(t) > 0 && t[0] == '<' {
		var x wechatXML
		if err := xml.Unmarshal(t, &x); err != nil {
			fail(w, http.StatusBadRequest, "bad xml: "+err.Error())
			return
		}
		to = x.ToUserName
		d = data{ID: x.MsgId, Name: x.FromUserName, MsgType: x.MsgType, ContactID: x.FromUserName,
			SendTime: sendTime(x.CreateTime)}
		if x.Content != "" || x.MediaId == "" {
			d.Msg = map[string]string{"content": x.Content}
		} else {
			d.Msg = map[string]string{"media_path": x.MediaId}
		}
	} else {
		var req struct {
			Data data `json:"data"`
		}
		if err := json.Unmarshal(t, &req); err != nil {
			fail(w, http.StatusBadRequest, "bad json: "+err.Error())
			return
		}
		d = req.Data
		to = d.ContactID
		// The recipient sees the sender as the other party.
		d.ContactID = r.URL.Query().Get("userid")
		d.SendTime = time.Now().Unix()
	}
	if to == "" {
		fail(w, http.StatusBadRequest, "missing recipient")
		return
	}
	code, known := codes[d.MsgType]
	if !known {
		code = codes["text"]
	}
	h.push(to, mustJSON(frame{Data: d, Result: result{code, "common"}}))
	w.Header().Set("Content-Type", "application/json")
	w.Write(ok)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:1234", "address to listen on")
	flag.Parse()
	h := newHub()
	mux := http.NewServeMux()
	mux.HandleFunc("/send", h.send)
	mux.HandleFunc(prefix+"/send", h.send)
	mux.HandleFunc(prefix+"/send_xml", h.send)
	mux.HandleFunc(prefix+"/msg", h.serveWS)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		h.serveWS(w, r)
	})
	log.Fatal(http.ListenAndServe(*listen, mux))
}
