package doctor

import "strings"

// ParseIPTablesSave reads the chains of an iptables-save dump of one table
// (the "filter" table's, from iptables-legacy-save -t filter): policies
// from ":CHAIN POLICY [n:m]" lines, rules from "-A CHAIN ..." lines.
func ParseIPTablesSave(dump, family string) []Chain {
	var chains []Chain
	index := map[string]int{}
	table := "filter"
	for _, line := range strings.Split(dump, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				continue
			}
			c := Chain{View: "iptables-legacy", Family: family, Table: table, Name: f[0]}
			if f[1] != "-" {
				c.Policy = strings.ToLower(f[1])
				if builtin := map[string]string{"INPUT": "input", "FORWARD": "forward", "OUTPUT": "output", "PREROUTING": "prerouting", "POSTROUTING": "postrouting"}[f[0]]; builtin != "" {
					c.Hook = builtin
				}
			}
			index[f[0]] = len(chains)
			chains = append(chains, c)
		case strings.HasPrefix(line, "-A "):
			tok := tokens(line)
			if len(tok) < 2 {
				continue
			}
			i, ok := index[tok[1]]
			if !ok {
				continue
			}
			chains[i].Rules = append(chains[i].Rules, iptablesRule(tok[2:], line))
		}
	}
	return chains
}

// iptablesRule reads one rule's arguments (after "-A CHAIN").
func iptablesRule(args []string, line string) Rule {
	r := Rule{Text: strings.TrimPrefix(line, "-A ")}
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() string {
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch a {
		case "!":
			r.Conditional = true
		case "-i", "--in-interface":
			r.In = next()
		case "-o", "--out-interface":
			r.Out = next()
		case "-m", "--match":
			if next() == "comment" {
				continue
			}
			r.Conditional = true
		case "--comment":
			next()
		case "-j", "--jump", "-g", "--goto":
			t := next()
			switch t {
			case "ACCEPT":
				r.Verdict = "accept"
			case "DROP":
				r.Verdict = "drop"
			case "REJECT":
				r.Verdict = "reject"
			case "RETURN":
				r.Verdict = "return"
			case "LOG", "NFLOG", "MARK", "CONNMARK", "TRACE":
			default:
				r.Verdict, r.Target = "jump", t
				if a == "-g" || a == "--goto" {
					r.Verdict = "goto"
				}
			}
			return r // what follows are the target's options
		default:
			if strings.HasPrefix(a, "-") {
				r.Conditional = true
			}
		}
	}
	return r
}

// tokens splits an iptables-save line, keeping double-quoted strings whole.
func tokens(line string) []string {
	var out []string
	var cur strings.Builder
	quoted, have := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && quoted && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quoted = !quoted
			have = true
		case (c == ' ' || c == '\t') && !quoted:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}
