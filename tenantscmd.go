package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/proxy"
)

// tenantsUsage is what "thanksio-proxy tenants help" prints.
const tenantsUsage = `Usage: thanksio-proxy tenants COMMAND [ARGUMENTS]

Manages the tenants of a running proxy through its admin API.

Commands:
  list [--json] [--state active|reauthorization_required]
                      the tenants as a table, or their statuses as a JSON array
  show TENANT         the tenant's status as JSON (never its token)
  import TENANT       store the token read from standard input: the admin API's
                      JSON body {"access_token", "refresh_token"?, "expires_in"?
                      or "expiry"?}, or a bare access token on one line
  refresh TENANT      refresh the tenant's token now and print its status
  check TENANT        call thanks.io's GET /ping with the tenant's token and
                      print the answer; exit 1 when it is not ok
  connect TENANT [--return-to URL]
                      print a one-time link for the account owner to connect
  delete TENANT       forget the tenant
  help                print this text

Environment:
  ADMIN_TOKEN         the proxy's admin token (required)
  ADMIN_URL           the admin API's base URL (default: http://127.0.0.1 on the
                      port of OPS_ADDR, which defaults to :9090)

Tokens are read from standard input, never from arguments (which would land in
shell history), and never printed.

Exit status: 0 on success, 1 when the call was refused or failed, 2 for a
usage error.
`

// exitError carries the process's exit code: 2 for a usage error, 1 for a refused call.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError is an exit 2 saying what is wrong with the command line or the
// environment.
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf("tenants: "+format+` (see "thanksio-proxy tenants help")`, args...)}
}

// failed is an exit 1 for err, a call that was refused or did not complete.
func failed(err error) error {
	return &exitError{code: 1, err: err}
}

// Bounds of the tenants command's calls.
const (
	// adminCallTimeout bounds one call of the admin API, the answer's body
	// included.
	adminCallTimeout = 10 * time.Second
	// maxAdminAnswer bounds the body of an answer that is read.
	maxAdminAnswer = 4 << 20
	// maxImportInput bounds standard input for import: the admin API
	// refuses bodies past 64 KiB anyway.
	maxImportInput = 64 << 10
	// listPageLimit is the page size of list: the largest the API allows.
	listPageLimit = 1000
)

// tenantsCommand runs "thanksio-proxy tenants ...": args are what follows "tenants".
func tenantsCommand(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		io.WriteString(stdout, tenantsUsage)
		return usageError("a command is required")
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("tenants "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		asJSON   bool
		state    string
		returnTo string
		run      func(c *adminClient, tenant string) error
	)
	switch cmd {
	case "help", "-h", "-help", "--help":
		io.WriteString(stdout, tenantsUsage)
		return nil
	case "list":
		fs.BoolVar(&asJSON, "json", false, "")
		fs.StringVar(&state, "state", "", "")
	case "show":
		run = func(c *adminClient, tenant string) error {
			return c.printStatus(ctx, stdout, http.MethodGet, tenant, "", nil)
		}
	case "refresh":
		run = func(c *adminClient, tenant string) error {
			return c.printStatus(ctx, stdout, http.MethodPost, tenant, "/refresh", nil)
		}
	case "delete":
		run = func(c *adminClient, tenant string) error {
			_, err := c.call(ctx, http.MethodDelete, "/admin/tenants/"+url.PathEscape(tenant), nil)
			return err
		}
	case "check":
		run = func(c *adminClient, tenant string) error { return c.check(ctx, stdout, tenant) }
	case "import":
		run = func(c *adminClient, tenant string) error { return c.importToken(ctx, stdin, stdout, tenant) }
	case "connect":
		fs.StringVar(&returnTo, "return-to", "", "")
		run = func(c *adminClient, tenant string) error { return c.connect(ctx, stdout, tenant, returnTo) }
	default:
		return usageError("unknown command %q", cmd)
	}
	operands, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		io.WriteString(stdout, tenantsUsage)
		return nil
	}
	if err != nil {
		return usageError("%s: %v", cmd, err)
	}

	if cmd == "list" {
		if len(operands) > 0 {
			return usageError("list takes no arguments")
		}
		if state != "" && state != "active" && state != "reauthorization_required" {
			return usageError("--state must be active or reauthorization_required")
		}
		c, err := newAdminClient(getenv)
		if err != nil {
			return err
		}
		return c.list(ctx, stdout, state, asJSON)
	}

	switch {
	case len(operands) == 0:
		return usageError("%s needs a tenant", cmd)
	case len(operands) > 1 && cmd == "import":
		return usageError("import takes the tenant alone: the token is read from standard input, so that it stays out of shell history")
	case len(operands) > 1:
		return usageError("%s takes one tenant", cmd)
	case !proxy.ValidTenant(operands[0]):
		// The argument is not repeated: it may be a token given by
		// mistake, which must not be printed.
		return usageError("the argument is not a tenant id: 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-', and not '.' or '..' (tokens are read from standard input, never from arguments)")
	}
	c, err := newAdminClient(getenv)
	if err != nil {
		return err
	}
	return run(c, operands[0])
}

// parseInterspersed parses the flags of fs wherever they stand among args,
// and returns the other arguments in order. Everything after "--" is an
// operand (a tenant id may start with '-').
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var operands []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(operands, rest...), nil
		}
		if len(rest) == 0 {
			return operands, nil
		}
		operands = append(operands, rest[0])
		args = rest[1:]
	}
}

// adminClient calls the admin API of one proxy.
type adminClient struct {
	base  string // ADMIN_URL without a trailing slash
	token string
	http  *http.Client
}

// newAdminClient reads ADMIN_TOKEN and ADMIN_URL (or OPS_ADDR for its
// default); a missing or malformed variable is a usage error naming it.
func newAdminClient(getenv func(string) string) (*adminClient, error) {
	token := getenv("ADMIN_TOKEN")
	if token == "" {
		return nil, usageError("ADMIN_TOKEN is empty: set it to the proxy's admin token")
	}
	base := getenv("ADMIN_URL")
	if base == "" {
		opsAddr, err := loadOpsAddr(getenv)
		if err != nil {
			return nil, &exitError{code: 2, err: err}
		}
		host, port, err := net.SplitHostPort(opsAddr)
		if err != nil {
			return nil, usageError("OPS_ADDR %q is not a host:port; set ADMIN_URL", opsAddr)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		base = "http://" + net.JoinHostPort(host, port)
	} else {
		u, err := url.Parse(base)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, usageError("ADMIN_URL must be an http or https URL without a query, such as http://127.0.0.1:9090")
		}
	}
	return &adminClient{
		base:  strings.TrimRight(base, "/"),
		token: token,
		http: &http.Client{
			Timeout: adminCallTimeout,
			// The admin token goes to ADMIN_URL alone; a redirect is
			// reported, not followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// apiError is an admin call that the proxy refused: its status and the
// code and message of its JSON error.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("the admin API answered %d %s, without the proxy's JSON error (is ADMIN_URL the proxy's ops address?)",
			e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("%s: %s (%d)", e.Code, e.Message, e.Status)
}

// call sends one admin call with body (nil for none) as JSON, and returns
// the body of a 2xx answer. Any other answer is an *apiError, and a call
// that did not complete is an error without the answer; both exit 1.
func (c *adminClient) call(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return nil, failed(fmt.Errorf("%s %s: %w", method, path, err))
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.http.Do(req)
	if err != nil {
		// The *url.Error names the method and the URL, with any password
		// of ADMIN_URL left out.
		return nil, failed(fmt.Errorf("the admin API could not be reached (is the proxy running, and ADMIN_URL or OPS_ADDR right?): %w", err))
	}
	defer res.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(res.Body, maxAdminAnswer))
	if err != nil {
		return nil, failed(fmt.Errorf("%s %s: reading the answer: %w", method, path, err))
	}
	if res.StatusCode/100 != 2 {
		e := &apiError{Status: res.StatusCode}
		var body struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		if json.Unmarshal(answer, &body) == nil && body.Error != "" {
			e.Code, e.Message = printableText(body.Error), printableText(body.Message)
		}
		return nil, failed(e)
	}
	return answer, nil
}

// callJSON is call for an answer that is JSON, decoded into out.
func (c *adminClient) callJSON(ctx context.Context, method, path string, body []byte, out any) error {
	answer, err := c.call(ctx, method, path, body)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return failed(fmt.Errorf("%s %s: the answer is not the admin API's JSON (is ADMIN_URL the proxy's ops address?)", method, path))
	}
	return nil
}

// printStatus makes the call method on the tenant's path plus suffix, with
// body (nil for none), and prints the status it answers as indented JSON.
func (c *adminClient) printStatus(ctx context.Context, stdout io.Writer, method, tenant, suffix string, body []byte) error {
	var status json.RawMessage
	if err := c.callJSON(ctx, method, "/admin/tenants/"+url.PathEscape(tenant)+suffix, body, &status); err != nil {
		return err
	}
	return printJSON(stdout, status)
}

// printJSON prints v as indented JSON and a newline.
func printJSON(stdout io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return failed(err)
	}
	_, err = stdout.Write(append(b, '\n'))
	return err
}

// list prints every tenant (in state, when not empty), reading all pages
// and then each tenant's status. A tenant deleted meanwhile is left out.
func (c *adminClient) list(ctx context.Context, stdout io.Writer, state string, asJSON bool) error {
	var ids []string
	for after := ""; ; {
		q := url.Values{"limit": {strconv.Itoa(listPageLimit)}}
		if after != "" {
			q.Set("after", after)
		}
		if state != "" {
			q.Set("state", state)
		}
		var page struct {
			Tenants []string `json:"tenants"`
			Next    string   `json:"next"`
		}
		if err := c.callJSON(ctx, http.MethodGet, "/admin/tenants?"+q.Encode(), nil, &page); err != nil {
			return err
		}
		ids = append(ids, page.Tenants...)
		if page.Next == "" {
			break
		}
		if page.Next <= after {
			return failed(fmt.Errorf("the admin API's list did not advance past %q", after))
		}
		after = page.Next
	}

	statuses := make([]json.RawMessage, 0, len(ids))
	listed := make([]string, 0, len(ids))
	for _, id := range ids {
		if !proxy.ValidTenant(id) {
			return failed(fmt.Errorf("the admin API listed %q, which is not a tenant id", printableText(id)))
		}
		var status json.RawMessage
		err := c.callJSON(ctx, http.MethodGet, "/admin/tenants/"+url.PathEscape(id), nil, &status)
		var ae *apiError
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound && ae.Code == "unknown_tenant" {
			continue
		}
		if err != nil {
			return err
		}
		statuses = append(statuses, status)
		listed = append(listed, id)
	}
	if asJSON {
		return printJSON(stdout, statuses)
	}

	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tSTATE\tEXPIRY\tLAST REFRESH\tLAST ERROR")
	for i, raw := range statuses {
		var st auth.TenantStatus
		if err := json.Unmarshal(raw, &st); err != nil {
			return failed(fmt.Errorf("the status of %s is not the admin API's JSON", listed[i]))
		}
		expiry := formatTime(st.Expiry)
		switch {
		case st.Expiry == nil && !st.HasRefreshToken:
			expiry = "never"
		case st.Expired:
			expiry += " (expired)"
		}
		lastError := "-"
		if st.LastError != "" {
			lastError = printableText(st.LastError)
			if st.LastErrorAt != nil {
				lastError = formatTime(st.LastErrorAt) + " " + lastError
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", listed[i], orDash(printableText(string(st.State))), expiry, formatTime(st.LastRefresh), lastError)
	}
	return tw.Flush()
}

// formatTime is t in RFC 3339 UTC, or "-" for none.
func formatTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printableText is s with control characters replaced by spaces, so that
// an answer can neither break the table's columns nor drive the terminal.
func printableText(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
}

// importToken stores the token read from stdin for the tenant and prints
// the resulting status. Neither the status nor an error holds the token.
func (c *adminClient) importToken(ctx context.Context, stdin io.Reader, stdout io.Writer, tenant string) error {
	if stdin == nil {
		return usageError("import reads the token from standard input, and there is none")
	}
	input, err := io.ReadAll(io.LimitReader(stdin, maxImportInput+1))
	if err != nil {
		return failed(fmt.Errorf("reading standard input: %w", err))
	}
	if len(input) > maxImportInput {
		return usageError("standard input is larger than %d bytes", maxImportInput)
	}
	body, secrets, err := importBody(input)
	if err != nil {
		return err
	}
	err = c.printStatus(ctx, stdout, http.MethodPut, tenant, "/token", body)
	var ae *apiError
	if errors.As(err, &ae) {
		// The admin API does not echo a token; a server at ADMIN_URL that
		// is not the proxy might.
		for _, s := range secrets {
			ae.Message = strings.ReplaceAll(ae.Message, s, "[redacted]")
			ae.Code = strings.ReplaceAll(ae.Code, s, "[redacted]")
		}
	}
	return err
}

// importBody turns standard input into the body of PUT .../token: a JSON
// object is sent as it is (the admin API checks it), and anything else must
// be one access token on one line. It returns the strings of the input that
// an error must not show.
func importBody(input []byte) (body []byte, secrets []string, err error) {
	text := strings.TrimSpace(string(input))
	switch {
	case text == "":
		return nil, nil, usageError("standard input is empty: pipe the token in, such as: thanksio-proxy tenants import TENANT < token.txt")
	case strings.HasPrefix(text, "{"):
		var v any
		if err := json.Unmarshal([]byte(text), &v); err != nil {
			// The decoder's message may quote the input: leave it out.
			return nil, nil, usageError("standard input starts with '{' but is not valid JSON")
		}
		return []byte(text), jsonStrings(v), nil
	case strings.ContainsAny(text, " \t\r\n\v\f"):
		return nil, nil, usageError("standard input must hold one access token on one line, or the admin API's JSON body")
	}
	body, err = json.Marshal(struct {
		AccessToken string `json:"access_token"`
	}{text})
	if err != nil {
		return nil, nil, failed(err)
	}
	return body, []string{text}, nil
}

// jsonStrings returns the string values in v, a decoded JSON value.
func jsonStrings(v any) []string {
	var out []string
	switch v := v.(type) {
	case string:
		if v != "" {
			out = append(out, v)
		}
	case []any:
		for _, e := range v {
			out = append(out, jsonStrings(e)...)
		}
	case map[string]any:
		for _, e := range v {
			out = append(out, jsonStrings(e)...)
		}
	}
	return out
}

// check prints the answer of the tenant's check, and fails (exit 1) when
// it is not ok.
func (c *adminClient) check(ctx context.Context, stdout io.Writer, tenant string) error {
	var raw json.RawMessage
	if err := c.callJSON(ctx, http.MethodPost, "/admin/tenants/"+url.PathEscape(tenant)+"/check", nil, &raw); err != nil {
		return err
	}
	var answer struct {
		OK      bool   `json:"ok"`
		Status  int    `json:"status"`
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(raw, &answer); err != nil {
		return failed(errors.New("the check's answer is not the admin API's JSON"))
	}
	if err := printJSON(stdout, raw); err != nil {
		return err
	}
	switch {
	case answer.OK:
		return nil
	case answer.Error != "":
		// The call did not reach thanks.io: the proxy's own code.
		return failed(fmt.Errorf("check failed: %s: %s (%d)", printableText(answer.Error), printableText(answer.Message), answer.Status))
	default:
		return failed(fmt.Errorf("check failed: thanks.io answered %d: %s", answer.Status, printableText(answer.Message)))
	}
}

// connect prints a one-time authorize URL for the tenant's account owner.
func (c *adminClient) connect(ctx context.Context, stdout io.Writer, tenant, returnTo string) error {
	var body []byte
	if returnTo != "" {
		b, err := json.Marshal(struct {
			ReturnTo string `json:"return_to"`
		}{returnTo})
		if err != nil {
			return failed(err)
		}
		body = b
	}
	var answer struct {
		AuthorizeURL string `json:"authorize_url"`
	}
	if err := c.callJSON(ctx, http.MethodPost, "/admin/tenants/"+url.PathEscape(tenant)+"/connect", body, &answer); err != nil {
		return err
	}
	if answer.AuthorizeURL == "" {
		return failed(errors.New("the admin API answered no authorize_url"))
	}
	_, err := fmt.Fprintln(stdout, printableText(answer.AuthorizeURL))
	return err
}
