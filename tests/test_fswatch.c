/*
 * test_fswatch.c - em_watch_file on real files in a fresh temporary
 * directory: modification, rename (the watch goes on), deletion (then
 * unbind), a missing file, several watches on one file, stopping inside a
 * callback, em_stop and em_loop_free with live watches, an overflowing
 * event queue, bad input and descriptor counts.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "em.h"
#include "helpers.h"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof(dir), "/tmp/em-fswatch-%d-XXXXXX", (int)getpid());
    cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
}

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(fswatch, .init = make_dir, .fini = remove_dir);

static char *path_of(const char *name)
{
    static char buf[4][PATH_MAX];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, PATH_MAX, "%s/%s", dir, name);
    return p;
}

static void write_file(const char *path, const char *text, int flags)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0644);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    ssize_t n = write(fd, text, strlen(text));
    cr_assert_eq(n, (ssize_t)strlen(text));
    close(fd);
}

/* ---- a recording handler ---------------------------------------------- */

#define MAX_EVENTS 64

struct record {
    int modified;
    int moved;
    int deleted;
    int unbinds;
    int reason;
    char events[MAX_EVENTS]; /* 'm', 'v', 'd', 'u' in order */
    int count;
    int stop_on_modify; /* em_stop_watching inside file_modified */
    int stop_rc;
    int unbind_inside_stop; /* unbind ran inside em_stop_watching */
    int in_stop;
    em_file_watch *stop_other; /* also stop this one on modify */
    char path_at_unbind[PATH_MAX];
};

static void note(struct record *r, char c)
{
    if (r->count < MAX_EVENTS)
        r->events[r->count++] = c;
}

static void on_modified(em_file_watch *w, void *arg)
{
    struct record *r = arg;
    r->modified++;
    note(r, 'm');
    if (r->stop_on_modify) {
        r->in_stop = 1;
        r->stop_rc = em_stop_watching(w);
        if (r->stop_other)
            em_stop_watching(r->stop_other);
        r->in_stop = 0;
    }
}

static void on_moved(em_file_watch *w, void *arg)
{
    (void)w;
    struct record *r = arg;
    r->moved++;
    note(r, 'v');
}

static void on_deleted(em_file_watch *w, void *arg)
{
    (void)w;
    struct record *r = arg;
    r->deleted++;
    note(r, 'd');
}

static void on_unbind(em_file_watch *w, void *arg, int reason)
{
    struct record *r = arg;
    r->unbinds++;
    r->reason = reason;
    r->unbind_inside_stop |= r->in_stop;
    note(r, 'u');
    snprintf(r->path_at_unbind, sizeof(r->path_at_unbind), "%s",
             em_file_watch_path(w));
}

static const em_file_handler recorder = {
    .file_modified = on_modified,
    .file_moved = on_moved,
    .file_deleted = on_deleted,
    .unbind = on_unbind,
};

static em_file_watch *watch(em_loop *loop, const char *path, struct record *r)
{
    em_file_watch *w = NULL;
    int err = em_watch_file(loop, path, &recorder, r, &w);
    cr_assert_eq(err, 0, "em_watch_file(%s): %s", path, em_strerror(err));
    cr_assert_not_null(w);
    return w;
}

/* ---- events ------------------------------------------------------------ */

Test(fswatch, modify_rename_delete, .timeout = TH_TIMEOUT(10))
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    char *path = path_of("a.txt");
    write_file(path, "one\n", O_TRUNC);
    struct record r = {0};
    em_file_watch *w = watch(loop, path, &r);
    cr_assert_str_eq(em_file_watch_path(w), path);
    cr_assert_eq(em_file_watch_loop(w), loop);
    cr_assert_eq(em_file_watch_count(loop), 1);

    write_file(path, "two\n", O_APPEND);
    th_run_until_count(loop, &r.modified, 1, 5.0);

    char *moved = path_of("b.txt");
    cr_assert_eq(rename(path, moved), 0);
    th_run_until_count(loop, &r.moved, 1, 5.0);
    /* The watch follows the file, not the name. */
    int before = r.modified;
    write_file(moved, "three\n", O_APPEND);
    th_run_until_count(loop, &r.modified, before + 1, 5.0);
    cr_assert_str_eq(em_file_watch_path(w), path, "path() changed");

    cr_assert_eq(unlink(moved), 0);
    th_run_until_count(loop, &r.unbinds, 1, 5.0);
    cr_assert_eq(r.deleted, 1);
    cr_assert_eq(r.reason, 0);
    cr_assert_eq(r.events[r.count - 2], 'd');
    cr_assert_eq(r.events[r.count - 1], 'u', "unbind is last");
    cr_assert_str_eq(r.path_at_unbind, path);
    cr_assert_eq(em_file_watch_count(loop), 0);
    th_run_for(loop, 0.05);
    cr_assert_eq(r.unbinds, 1);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), fds);
}

Test(fswatch, truncation_is_a_modification, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    char *path = path_of("t.txt");
    write_file(path, "something\n", O_TRUNC);
    struct record r = {0};
    em_file_watch *w = watch(loop, path, &r);
    cr_assert_eq(truncate(path, 0), 0);
    th_run_until_count(loop, &r.modified, 1, 5.0);
    /* Metadata alone is not a modification. */
    cr_assert_eq(chmod(path, 0600), 0);
    th_run_for(loop, 0.05);
    cr_assert_eq(r.modified, 1);
    cr_assert_eq(em_stop_watching(w), 0);
    th_run_until_count(loop, &r.unbinds, 1, 5.0);
    th_free_loop(loop);
}

Test(fswatch, deletion_waits_for_the_last_descriptor, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    char *path = path_of("held.txt");
    write_file(path, "x", O_TRUNC);
    struct record r = {0};
    watch(loop, path, &r);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    cr_assert_eq(unlink(path), 0);
    th_run_for(loop, 0.1);
    cr_assert_eq(r.deleted, 0, "deleted while a descriptor holds the inode");
    close(fd);
    th_run_until_count(loop, &r.unbinds, 1, 5.0);
    cr_assert_eq(r.deleted, 1);
    th_free_loop(loop);
}

Test(fswatch, missing_file_is_enoent, .timeout = TH_TIMEOUT(10))
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    struct record r = {0};
    em_file_watch *w = (em_file_watch *)&r;
    cr_assert_eq(em_watch_file(loop, path_of("nothing"), &recorder, &r, &w),
                 -ENOENT);
    cr_assert_null(w, "*out is cleared on failure");
    cr_assert_eq(em_file_watch_count(loop), 0);
    /* A file appearing later is not watched. */
    write_file(path_of("nothing"), "late", O_TRUNC);
    th_run_for(loop, 0.05);
    cr_assert_eq(r.count, 0);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), fds);
}

/* ---- several watches and stopping -------------------------------------- */

Test(fswatch, two_watches_on_one_file, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    char *path = path_of("shared.txt");
    write_file(path, "x", O_TRUNC);
    struct record a = {0}, b = {0};
    em_file_watch *wa = watch(loop, path, &a);
    watch(loop, path, &b);
    cr_assert_eq(em_file_watch_count(loop), 2);

    write_file(path, "y", O_APPEND);
    th_run_until_count(loop, &a.modified, 1, 5.0);
    th_run_until_count(loop, &b.modified, 1, 5.0);

    /* Stopping one leaves the other (and the kernel watch they share). */
    cr_assert_eq(em_stop_watching(wa), 0);
    cr_assert_eq(em_stop_watching(wa), 0, "stopping twice is harmless");
    cr_assert_eq(a.unbinds, 0, "unbind inside em_stop_watching");
    th_run_until_count(loop, &a.unbinds, 1, 5.0);
    write_file(path, "z", O_APPEND);
    th_run_until_count(loop, &b.modified, 2, 5.0);
    cr_assert_eq(a.modified, 1, "a stopped watch got an event");

    cr_assert_eq(unlink(path), 0);
    th_run_until_count(loop, &b.unbinds, 1, 5.0);
    cr_assert_eq(a.unbinds, 1);
    cr_assert_eq(a.deleted, 0);
    th_free_loop(loop);
}

Test(fswatch, stop_inside_a_callback, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    char *path = path_of("s.txt");
    write_file(path, "x", O_TRUNC);
    struct record first = {.stop_on_modify = 1}, second = {0};
    watch(loop, path, &first);
    em_file_watch *w2 = watch(loop, path, &second);
    first.stop_other = w2; /* stopped before it sees this event */

    write_file(path, "y", O_APPEND);
    th_run_until_count(loop, &first.unbinds, 1, 5.0);
    th_run_until_count(loop, &second.unbinds, 1, 5.0);
    cr_assert_eq(first.stop_rc, 0);
    cr_assert_eq(first.unbind_inside_stop, 0);
    cr_assert_eq(first.modified, 1);
    cr_assert_eq(second.modified, 0, "stopped in an earlier callback");
    cr_assert_eq(first.reason, 0);
    cr_assert_eq(em_file_watch_count(loop), 0);

    write_file(path, "z", O_APPEND);
    th_run_for(loop, 0.05);
    cr_assert_eq(first.modified, 1);
    th_free_loop(loop);
}

/* A new watch started inside a callback does not get the event that is
 * being delivered. */
struct starter {
    em_loop *loop;
    const char *path;
    struct record started;
    int calls;
};

static void start_another(em_file_watch *w, void *arg)
{
    (void)w;
    struct starter *s = arg;
    if (s->calls++ == 0)
        cr_assert_eq(
            em_watch_file(s->loop, s->path, &recorder, &s->started, NULL), 0);
}

static const em_file_handler starting = {.file_modified = start_another};

Test(fswatch, watch_started_in_a_callback_waits_for_the_next_event,
     .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    char *path = path_of("n.txt");
    write_file(path, "x", O_TRUNC);
    struct starter s = {.loop = loop, .path = path};
    cr_assert_eq(em_watch_file(loop, path, &starting, &s, NULL), 0);
    write_file(path, "y", O_APPEND);
    th_run_until_count(loop, &s.calls, 1, 5.0);
    th_run_for(loop, 0.02);
    cr_assert_eq(s.started.modified, 0);
    write_file(path, "z", O_APPEND);
    th_run_until_count(loop, &s.started.modified, 1, 5.0);
    cr_assert_eq(em_file_watch_count(loop), 2);
    /* Freeing with live watches: unbind(0) for each, -EBUSY. */
    cr_assert_eq(em_loop_free(loop), -EBUSY);
    cr_assert_eq(s.started.unbinds, 1);
    cr_assert_eq(s.started.reason, 0);
}

/* ---- stop and free ------------------------------------------------------ */

struct late {
    em_loop *loop;
    int rc;
    int unbinds;
};

static void unbind_then_watch(em_file_watch *w, void *arg, int reason)
{
    (void)w;
    (void)reason;
    struct late *l = arg;
    l->unbinds++;
    l->rc = em_watch_file(l->loop, dir, &recorder, NULL, NULL);
}

static const em_file_handler late_handler = {.unbind = unbind_then_watch};

static void stop_tick(em_loop *loop, void *arg)
{
    (void)arg;
    em_stop(loop);
}

Test(fswatch, em_stop_ends_every_watch, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    char *path = path_of("stop.txt");
    write_file(path, "x", O_TRUNC);
    struct record r = {0};
    watch(loop, path, &r);
    struct late l = {.loop = loop};
    cr_assert_eq(em_watch_file(loop, dir, &late_handler, &l, NULL), 0);
    cr_assert_eq(em_next_tick(loop, stop_tick, NULL), 0);
    cr_assert_eq(em_run(loop), 0);
    cr_assert_eq(r.unbinds, 1);
    cr_assert_eq(r.reason, 0);
    cr_assert_eq(l.unbinds, 1);
    cr_assert_eq(l.rc, -ECANCELED, "a watch started while stopping");
    cr_assert_eq(em_file_watch_count(loop), 0);
    /* The loop runs again and can watch again. */
    struct record again = {0};
    watch(loop, path, &again);
    write_file(path, "y", O_APPEND);
    th_run_until_count(loop, &again.modified, 1, 5.0);
    cr_assert_eq(unlink(path), 0);
    th_run_until_count(loop, &again.unbinds, 1, 5.0);
    th_free_loop(loop);
}

/* ---- a directory, an overflowing queue ---------------------------------- */

Test(fswatch, directory_reports_its_own_deletion, .timeout = TH_TIMEOUT(10))
{
    em_loop *loop = th_loop();
    char *sub = path_of("sub");
    cr_assert_eq(mkdir(sub, 0755), 0);
    struct record r = {0};
    watch(loop, sub, &r);
    cr_assert_eq(rmdir(sub), 0);
    th_run_until_count(loop, &r.unbinds, 1, 5.0);
    cr_assert_eq(r.deleted, 1);
    th_free_loop(loop);
}

Test(fswatch, queue_overflow_reports_every_watch_modified,
     .timeout = TH_TIMEOUT(30))
{
    em_loop *loop = th_loop();
    char *p1 = path_of("o1"), *p2 = path_of("o2");
    write_file(p1, "", O_TRUNC);
    write_file(p2, "", O_TRUNC);
    struct record r1 = {0}, r2 = {0};
    em_file_watch *w1 = watch(loop, p1, &r1);
    em_file_watch *w2 = watch(loop, p2, &r2);
    /* Alternating files defeats the kernel's merging of equal events, so
     * this queues more than max_queued_events (16384 by default). */
    int f1 = open(p1, O_WRONLY | O_CLOEXEC),
        f2 = open(p2, O_WRONLY | O_CLOEXEC);
    cr_assert(f1 >= 0 && f2 >= 0);
    for (int i = 0; i < 20000; i++) {
        cr_assert_eq(write(f1, "a", 1), 1);
        cr_assert_eq(write(f2, "b", 1), 1);
    }
    close(f1);
    close(f2);
    double deadline = th_now() + TH_TIMEOUT(10.0);
    while (r1.modified < 2 || r2.modified < 2) {
        cr_assert_lt(th_now(), deadline, "%d and %d", r1.modified, r2.modified);
        em_run_once(loop, 10);
    }
    th_run_for(loop, 0.1);
    cr_assert_eq(r1.unbinds + r2.unbinds, 0);
    /* Still working after the overflow. */
    int before = r1.modified;
    write_file(p1, "c", O_APPEND);
    th_run_until_count(loop, &r1.modified, before + 1, 5.0);
    em_stop_watching(w1);
    em_stop_watching(w2);
    th_run_until_count(loop, &r2.unbinds, 1, 5.0);
    th_free_loop(loop);
}

/* ---- bad input ---------------------------------------------------------- */

Test(fswatch, bad_arguments, .timeout = TH_TIMEOUT(10))
{
    int fds = th_count_fds();
    em_loop *loop = th_loop();
    char *path = path_of("f");
    write_file(path, "x", O_TRUNC);
    struct record r = {0};
    cr_assert_eq(em_watch_file(NULL, path, &recorder, &r, NULL), -EINVAL);
    cr_assert_eq(em_watch_file(loop, NULL, &recorder, &r, NULL), -EINVAL);
    cr_assert_eq(em_watch_file(loop, "", &recorder, &r, NULL), -EINVAL);
    cr_assert_eq(em_watch_file(loop, path, NULL, &r, NULL), -EINVAL);
    cr_assert_eq(em_watch_file(loop, path_of("f/below"), &recorder, &r, NULL),
                 -ENOTDIR);
    char *huge = malloc(PATH_MAX + 10);
    memset(huge, 'a', PATH_MAX + 9);
    huge[PATH_MAX + 9] = '\0';
    cr_assert_eq(em_watch_file(loop, huge, &recorder, &r, NULL), -ENAMETOOLONG);
    free(huge);
    cr_assert_eq(em_stop_watching(NULL), -EINVAL);
    cr_assert_null(em_file_watch_path(NULL));
    cr_assert_null(em_file_watch_loop(NULL));
    cr_assert_eq(em_file_watch_count(NULL), 0);
    cr_assert_eq(em_file_watch_count(loop), 0);
    cr_assert_eq(r.count, 0);
    th_free_loop(loop);
    cr_assert_eq(th_count_fds(), fds);
}
