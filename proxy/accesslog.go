package proxy

import (
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"
)

// LogFormat names the slog handler whose lines an AccessLogWriter writes.
type LogFormat int

const (
	// LogText is slog.TextHandler's key=value line.
	LogText LogFormat = iota
	// LogJSON is slog.JSONHandler's JSON object.
	LogJSON
)

// AccessLogWriter writes access lines, one per request, byte for byte as
// the Handler's Logger would write them through slog.TextHandler or
// slog.JSONHandler (without ReplaceAttr or AddSource), but formatted
// without slog: no Record, no Attr or any per field, and no handler
// lock. Formatting through slog cost as much as everything else the proxy
// adds to a request.
//
// Each line is formatted into a pooled buffer and handed to its output in
// one Write; the output must take whole lines from concurrent goroutines,
// as a slog handler's does. An AccessLogWriter is safe for concurrent use.
type AccessLogWriter struct {
	out    io.Writer
	json   bool
	prefix []byte // the line's start up to the time's value
	middle []byte // from after the time's value to the first field's value
	// keys are the other fields' keys, each with the separators before
	// and after it.
	keys [len(accessFields) - 1][]byte
	// second is the last line's time to the second, formatted: lines
	// within one second share it.
	second atomic.Pointer[formattedSecond]
}

// formattedSecond is a time to the second, formatted in RFC 3339, in two
// parts: before the fraction of the second ("2006-01-02T15:04:05") and
// after it ("Z" or "-07:00").
type formattedSecond struct {
	unix     int64
	loc      *time.Location
	datetime []byte
	zone     []byte
}

// accessFields are the keys of the access line's fields, in its order.
var accessFields = [...]string{"request_id", "tenant", "caller", "method", "path", "status",
	"duration", "upstream_duration", "replayed", "rate_limit_wait"}

// NewAccessLogWriter returns a writer of access lines to out in format.
// attrs are pairs of keys and values that every line carries after its
// message, as Logger.With would add them ("component", "proxy").
func NewAccessLogWriter(out io.Writer, format LogFormat, attrs ...string) *AccessLogWriter {
	w := &AccessLogWriter{out: out, json: format == LogJSON}
	if w.json {
		w.prefix = append(w.prefix, '{')
	}
	w.prefix = w.appendKey(w.prefix, slog.TimeKey, true)
	w.middle = w.appendKey(w.middle, slog.LevelKey, false)
	w.middle = w.appendString(w.middle, slog.LevelInfo.String())
	w.middle = w.appendKey(w.middle, slog.MessageKey, false)
	w.middle = w.appendString(w.middle, accessMessage)
	for i := 0; i+1 < len(attrs); i += 2 {
		w.middle = w.appendKey(w.middle, attrs[i], false)
		w.middle = w.appendString(w.middle, attrs[i+1])
	}
	w.middle = w.appendKey(w.middle, accessFields[0], false)
	for i, key := range accessFields[1:] {
		w.keys[i] = w.appendKey(nil, key, false)
	}
	return w
}

// accessMessage is the access line's message.
const accessMessage = "request"

// accessLine is what the access line says of one request.
type accessLine struct {
	time          time.Time // when the answer was done
	requestID     string
	tenant        string
	caller        string
	method        string
	path          string
	status        int
	duration      time.Duration
	upstream      time.Duration
	replayed      bool
	rateLimitWait time.Duration
}

// attrs returns l's fields as slog attributes, in the line's order: what
// AccessLogWriter reproduces. An array, so that they stay on the stack.
func (l *accessLine) attrs() [len(accessFields)]slog.Attr {
	return [...]slog.Attr{
		slog.String(accessFields[0], l.requestID),
		slog.String(accessFields[1], l.tenant),
		slog.String(accessFields[2], l.caller),
		slog.String(accessFields[3], l.method),
		slog.String(accessFields[4], l.path),
		slog.Int(accessFields[5], l.status),
		slog.Duration(accessFields[6], l.duration),
		slog.Duration(accessFields[7], l.upstream),
		slog.Bool(accessFields[8], l.replayed),
		slog.Duration(accessFields[9], l.rateLimitWait),
	}
}

// lineBuffers holds the buffers that lines are formatted into. A line
// longer than maxPooledLine (a long path) is not kept.
var lineBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooledLine = 16 << 10

// write formats l and hands it to the output.
func (w *AccessLogWriter) write(l *accessLine) {
	bp := lineBuffers.Get().(*[]byte)
	b := w.appendLine((*bp)[:0], l)
	_, _ = w.out.Write(b)
	if cap(b) <= maxPooledLine {
		*bp = b
		lineBuffers.Put(bp)
	}
}

// appendLine appends l's line, with its newline, to b.
func (w *AccessLogWriter) appendLine(b []byte, l *accessLine) []byte {
	b = append(b, w.prefix...)
	if w.json {
		b = append(b, '"')
		b = w.appendTime(b, l.time, false)
		b = append(b, '"')
	} else {
		b = w.appendTime(b, l.time, true)
	}
	b = append(b, w.middle...)
	b = w.appendString(b, l.requestID)
	b = append(b, w.keys[0]...)
	b = w.appendString(b, l.tenant)
	b = append(b, w.keys[1]...)
	b = w.appendString(b, l.caller)
	b = append(b, w.keys[2]...)
	b = w.appendString(b, l.method)
	b = append(b, w.keys[3]...)
	b = w.appendString(b, l.path)
	b = append(b, w.keys[4]...)
	b = strconv.AppendInt(b, int64(l.status), 10)
	b = append(b, w.keys[5]...)
	b = w.appendDuration(b, l.duration)
	b = append(b, w.keys[6]...)
	b = w.appendDuration(b, l.upstream)
	b = append(b, w.keys[7]...)
	b = strconv.AppendBool(b, l.replayed)
	b = append(b, w.keys[8]...)
	b = w.appendDuration(b, l.rateLimitWait)
	if w.json {
		b = append(b, '}')
	}
	return append(b, '\n')
}

// appendKey appends a key and what separates it from its value, preceded
// by what separates it from the field before it unless it is the first.
func (w *AccessLogWriter) appendKey(b []byte, key string, first bool) []byte {
	if !first {
		if w.json {
			b = append(b, ',')
		} else {
			b = append(b, ' ')
		}
	}
	b = w.appendString(b, key)
	if w.json {
		return append(b, ':')
	}
	return append(b, '=')
}

// appendString appends s as slog's handlers write a string: escaped and
// quoted for JSON; for text, as is unless it needs quoting, then quoted
// as by strconv.Quote.
func (w *AccessLogWriter) appendString(b []byte, s string) []byte {
	if w.json {
		b = append(b, '"')
		b = appendEscapedJSONString(b, s)
		return append(b, '"')
	}
	if needsQuoting(s) {
		return strconv.AppendQuote(b, s)
	}
	return append(b, s...)
}

// appendDuration appends d as slog's handlers write a time.Duration:
// nanoseconds in JSON, d.String() in text.
func (w *AccessLogWriter) appendDuration(b []byte, d time.Duration) []byte {
	if w.json {
		return strconv.AppendInt(b, int64(d), 10)
	}
	// String is inlined: its string does not leave this function, so it
	// is not allocated.
	return append(b, d.String()...)
}

// appendTime appends t as slog's handlers write a record's time: in RFC
// 3339 with its fraction of a second in milliseconds, truncated, for
// millis (TextHandler's), else in nanoseconds without trailing zeros
// (time.RFC3339Nano, JSONHandler's). The part to the second is formatted
// once per second. Years outside 0 to 9999, which no clock gives, are
// written as AppendFormat writes them (JSONHandler marks them an error).
func (w *AccessLogWriter) appendTime(b []byte, t time.Time, millis bool) []byte {
	sec := w.second.Load()
	if unix := t.Unix(); sec == nil || sec.unix != unix || sec.loc != t.Location() {
		if y := t.Year(); y < 0 || y > 9999 {
			if millis {
				return appendRFC3339Millis(b, t)
			}
			return t.AppendFormat(b, time.RFC3339Nano)
		}
		text := t.Truncate(time.Second).AppendFormat(nil, time.RFC3339)
		n := len("2006-01-02T15:04:05")
		sec = &formattedSecond{unix: unix, loc: t.Location(), datetime: text[:n:n], zone: text[n:]}
		w.second.Store(sec)
	}
	b = append(b, sec.datetime...)
	ns := t.Nanosecond()
	switch {
	case millis:
		ms := ns / 1e6
		b = append(b, '.', byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10))
	case ns != 0:
		var digits [10]byte
		digits[0] = '.'
		for i := 9; i > 0; i-- {
			digits[i] = byte('0' + ns%10)
			ns /= 10
		}
		end := len(digits)
		for digits[end-1] == '0' {
			end--
		}
		b = append(b, digits[:end]...)
	}
	return append(b, sec.zone...)
}

// appendRFC3339Millis appends t as slog.TextHandler writes a record's
// time: RFC 3339 with exactly three digits of milliseconds, truncated.
func appendRFC3339Millis(b []byte, t time.Time) []byte {
	// RFC3339Nano is the fast path of AppendFormat, but it trims trailing
	// zeros: a tenth of a millisecond added keeps four digits, and the
	// fourth is dropped.
	const prefixLen = len("2006-01-02T15:04:05.000")
	n := len(b)
	t = t.Truncate(time.Millisecond).Add(time.Millisecond / 10)
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b[:n+prefixLen], b[n+prefixLen+1:]...)
}

// jsonSafe holds whether a byte stands for itself in a JSON string: the
// ASCII that encoding/json's safeSet (slog's too) holds. Bytes from 0x80
// are decoded as UTF-8 first.
var jsonSafe = func() (safe [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		safe[c] = c != '"' && c != '\\'
	}
	return safe
}()

// textPlain holds whether an ASCII byte stands for itself in an unquoted
// text value: anything that JSON would not escape, and a backslash, but
// the separators of the text format.
var textPlain = func() (plain [256]bool) {
	plain = jsonSafe
	plain['\\'], plain[' '], plain['='] = true, false, false
	return plain
}()

// needsQuoting reports whether slog.TextHandler quotes s.
func needsQuoting(s string) bool {
	if len(s) == 0 {
		return true
	}
	i := 0
	for i < len(s) && textPlain[s[i]] {
		i++
	}
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if !textPlain[c] {
				return true
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return true
		}
		i += size
	}
	return false
}

const hexDigits = "0123456789abcdef"

// appendEscapedJSONString appends s escaped for a JSON string, as slog's
// JSONHandler escapes it (encoding/json without HTML escaping): invalid
// UTF-8 becomes U+FFFD, and U+2028 and U+2029 are escaped.
func appendEscapedJSONString(b []byte, s string) []byte {
	start, i := 0, 0
	for i < len(s) && jsonSafe[s[i]] {
		i++
	}
	for i < len(s) {
		if c := s[i]; c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	return append(b, s[start:]...)
}
