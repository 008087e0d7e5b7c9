package deploy

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
)

// dockerfile is what the compose checks need from the repository's
// Dockerfile: the programs its final stage installs, the files it copies
// from the repository, and its default command. It reads the subset of the
// syntax the Dockerfile uses (FROM … AS, WORKDIR, RUN with && chains, COPY
// [--from=stage], CMD and ENTRYPOINT in exec form, ENV, EXPOSE) and says so
// when it meets anything else, rather than guessing.
type dockerfile struct {
	stages []*stage
	// installed maps a path in the final image to how it got there
	// ("go build ./registrar", "./xcaddy.sh").
	installed map[string]string
	// files maps a path in the final image to the repository file copied
	// there (COPY without --from).
	files map[string]string
	cmd   []string
	// entrypoint is the final stage's ENTRYPOINT (nil: none).
	entrypoint []string
	// goBuilds maps an output path of a build stage to the package built.
	goBuilds map[string]string
}

type stage struct {
	name, from string
	workdir    string
	// outputs maps a path this stage produced to how ("go build ./monitor").
	outputs map[string]string
	copies  []copyInstr
	cmd     []string
	entry   []string
}

type copyInstr struct {
	from string // stage name, or "" for the build context
	srcs []string
	dest string
	line int
}

// parseDockerfile parses the Dockerfile text; readRepo reads a repository
// file (for scripts the Dockerfile runs, such as xcaddy.sh).
func parseDockerfile(text string, readRepo func(string) ([]byte, error)) (*dockerfile, error) {
	d := &dockerfile{installed: map[string]string{}, files: map[string]string{}, goBuilds: map[string]string{}}
	var cur *stage
	for _, ins := range logicalLines(text) {
		keyword, rest, _ := strings.Cut(ins.text, " ")
		rest = strings.TrimSpace(rest)
		keyword = strings.ToUpper(keyword)
		if keyword != "FROM" && cur == nil {
			return nil, fmt.Errorf("Dockerfile:%d: %s before FROM", ins.line, keyword)
		}
		switch keyword {
		case "FROM":
			f := strings.Fields(rest)
			cur = &stage{from: f[0], workdir: "/", outputs: map[string]string{}}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				cur.name = f[2]
			} else if len(f) != 1 {
				return nil, fmt.Errorf("Dockerfile:%d: cannot read FROM %s", ins.line, rest)
			}
			d.stages = append(d.stages, cur)
		case "WORKDIR":
			cur.workdir = inDir(cur.workdir, rest)
		case "RUN":
			if err := d.run(cur, rest, ins.line, readRepo); err != nil {
				return nil, err
			}
		case "COPY":
			c := copyInstr{line: ins.line}
			f := strings.Fields(rest)
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				if v, ok := strings.CutPrefix(f[0], "--from="); ok {
					c.from = v
				} else {
					return nil, fmt.Errorf("Dockerfile:%d: COPY option %s not understood", ins.line, f[0])
				}
				f = f[1:]
			}
			if len(f) < 2 {
				return nil, fmt.Errorf("Dockerfile:%d: COPY needs a source and a destination", ins.line)
			}
			c.srcs, c.dest = f[:len(f)-1], f[len(f)-1]
			cur.copies = append(cur.copies, c)
		case "CMD", "ENTRYPOINT":
			var argv []string
			if err := json.Unmarshal([]byte(rest), &argv); err != nil {
				return nil, fmt.Errorf("Dockerfile:%d: %s must be in exec form [\"prog\", \"arg\"]: %v", ins.line, keyword, err)
			}
			if keyword == "CMD" {
				cur.cmd = argv
			} else {
				cur.entry = argv
			}
		case "ENV", "EXPOSE", "LABEL", "ARG", "USER":
		default:
			return nil, fmt.Errorf("Dockerfile:%d: instruction %s not understood by this check", ins.line, keyword)
		}
	}
	if cur == nil {
		return nil, fmt.Errorf("Dockerfile: no FROM")
	}
	final := cur
	for _, c := range final.copies {
		if c.from == "" {
			for _, src := range c.srcs {
				dest := c.dest
				if strings.HasSuffix(dest, "/") {
					dest = path.Join(dest, path.Base(src))
				}
				d.files[dest] = src
			}
			continue
		}
		from := d.stage(c.from)
		if from == nil {
			return nil, fmt.Errorf("Dockerfile:%d: COPY --from=%s: no such stage", c.line, c.from)
		}
		for _, src := range c.srcs {
			src = inDir(from.workdir, src)
			found := false
			for out, how := range from.outputs {
				switch {
				case out == src: // one file
					dest := c.dest
					if strings.HasSuffix(dest, "/") {
						dest = path.Join(dest, path.Base(out))
					}
					d.installed[dest], found = how, true
				case strings.HasPrefix(out, src+"/"): // a directory's contents
					d.installed[path.Join(c.dest, strings.TrimPrefix(out, src+"/"))], found = how, true
				}
			}
			if !found {
				return nil, fmt.Errorf("Dockerfile:%d: COPY --from=%s %s: the stage builds nothing there", c.line, c.from, src)
			}
		}
	}
	d.cmd, d.entrypoint = final.cmd, final.entry
	return d, nil
}

func (d *dockerfile) stage(name string) *stage {
	for _, s := range d.stages {
		if s.name == name {
			return s
		}
	}
	return nil
}

// run follows the commands of one RUN line: go build -o, cp, ./xcaddy.sh,
// and ignores the rest (apt-get, go mod download).
func (d *dockerfile) run(s *stage, line string, n int, readRepo func(string) ([]byte, error)) error {
	for _, cmd := range strings.Split(line, "&&") {
		words := strings.Fields(cmd)
		for len(words) > 0 && strings.Contains(words[0], "=") { // VAR=value prefixes
			words = words[1:]
		}
		if len(words) == 0 {
			continue
		}
		switch {
		case len(words) >= 2 && words[0] == "go" && words[1] == "build":
			out, pkg := "", ""
			for i := 2; i < len(words); i++ {
				switch {
				case words[i] == "-o" && i+1 < len(words):
					out = words[i+1]
					i++
				case strings.HasPrefix(words[i], "-"):
				default:
					pkg = words[i]
				}
			}
			if out == "" || pkg == "" {
				return fmt.Errorf("Dockerfile:%d: %q: want go build -o OUTPUT ./package", n, strings.TrimSpace(cmd))
			}
			out = inDir(s.workdir, out)
			s.outputs[out] = "go build " + pkg
			d.goBuilds[out] = pkg
		case words[0] == "./xcaddy.sh":
			// xcaddy.sh writes the binary it names with --output.
			script, err := readRepo("xcaddy.sh")
			if err != nil {
				return fmt.Errorf("Dockerfile:%d: runs ./xcaddy.sh: %v", n, err)
			}
			f := strings.Fields(string(script))
			for i := range f[:len(f)-1] {
				if f[i] == "--output" {
					s.outputs[inDir(s.workdir, f[i+1])] = "./xcaddy.sh"
				}
			}
		case words[0] == "cp" && len(words) == 3:
			src, dst := inDir(s.workdir, words[1]), inDir(s.workdir, words[2])
			how, ok := s.outputs[src]
			if !ok {
				return fmt.Errorf("Dockerfile:%d: cp %s: no earlier step builds %s", n, words[1], src)
			}
			s.outputs[dst] = how
		}
	}
	return nil
}

// inDir is p, relative to dir unless absolute, cleaned.
func inDir(dir, p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(dir, p)
}

type logicalLine struct {
	text string
	line int
}

// logicalLines joins continuation lines ('\' at the end) and drops comments
// and blank lines.
func logicalLines(text string) []logicalLine {
	var out []logicalLine
	var cur strings.Builder
	start := 0
	for i, l := range strings.Split(text, "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if c, ok := strings.CutSuffix(t, `\`); ok {
			cur.WriteString(c + " ")
			continue
		}
		cur.WriteString(t)
		out = append(out, logicalLine{text: strings.Join(strings.Fields(cur.String()), " "), line: start})
		cur.Reset()
	}
	if cur.Len() > 0 {
		out = append(out, logicalLine{text: strings.Join(strings.Fields(cur.String()), " "), line: start})
	}
	return out
}
